"""The node's composition root: the one place that builds and starts every part of a node."""
