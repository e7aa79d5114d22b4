"""The one error type CLI commands raise for operator mistakes."""


class CliError(Exception):
    """Printed as ``brio: <message>`` with exit code 1, never as a traceback."""
