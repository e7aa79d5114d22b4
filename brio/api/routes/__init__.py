"""The API's routes, one module per resource, each a ``brio.api.routing.Router``."""
