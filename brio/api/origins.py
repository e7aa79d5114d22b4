"""Which browser origins may write to the API and open ``/ws`` (``[server] allowed_origins``).

Browsers send ``Origin`` with every cross-site write and every WebSocket handshake, and a page
can send a ``text/plain`` POST or open a WebSocket to ``localhost`` without asking anyone. So:
a request without ``Origin`` (curl, the CLI, other programs) passes; one with an ``Origin``
passes if that origin is the request's own (its scheme, and host and port as in ``Host``) or is
listed in ``allowed_origins``. Anything else, ``null`` included, is refused with 403.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from werkzeug.datastructures import Headers

from brio.api.errors import ApiError

CONFIG_KEY = "[server] allowed_origins"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}

Origin = tuple[str, str, int]


def parse_origin(text: str) -> Origin | None:
    """``(scheme, host, port)`` of an origin such as ``http://localhost:3000``; None if it is
    not one (``null``, a path, credentials, another scheme)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def _own_origin(scheme: str, host: str | None) -> Origin | None:
    if not host:
        return None
    web = _SCHEMES.get(scheme.lower())
    return parse_origin(f"{web}://{host}") if web else None


class OriginPolicy:
    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed = {found for text in allowed if (found := parse_origin(text)) is not None}

    def allows(self, origin: str | None, scheme: str, host: str | None) -> bool:
        """Whether a request with this ``Origin`` header, made over ``scheme`` (http, https,
        ws, wss) to the ``Host`` header ``host``, may go on."""
        if origin is None:
            return True
        found = parse_origin(origin)
        if found is None:
            return False
        return found in self.allowed or found == _own_origin(scheme, host)

    def check(self, headers: Headers, scheme: str) -> None:
        """Raise the 403 for a request with these headers unless its origin may go on."""
        origin = headers.get("Origin")
        if not self.allows(origin, scheme, headers.get("Host")):
            raise refused(origin or "")


def refused(origin: str) -> ApiError:
    return ApiError(
        403,
        "origin_not_allowed",
        f"the browser origin {origin!r} may not use this node; list it in {CONFIG_KEY} "
        "(default: only the node's own origin)",
        {"origin": origin, "config_key": CONFIG_KEY},
    )
