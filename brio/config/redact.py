"""Secret-free views of the configuration, for ``brio config show``, logs and error messages.

Secrets hide in two places: fields typed ``SecretStr`` (tokens, API keys) and passwords inside
URLs (``postgresql://brio:password@db/brio``). Both become ``***``. Redaction errs on the side
of hiding too much: an odd URL may lose more than its password, never leak it.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, SecretStr

from brio.config.model import BrioConfig

MASK = "***"

# scheme://user:password@... -> scheme://user:***@... (up to the last "@", so that a password
# with an unencoded "/" or "@" is still hidden).
_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^:@/]*):.*@", re.DOTALL)
# ?password=...&sslpassword=...&token=... in a URL's query string.
_QUERY_SECRET = re.compile(
    r"([?&][^=&#]*(?:password|secret|token|key)[^=&#]*=)[^&#]*", re.IGNORECASE
)


def redact_text(text: str) -> str:
    """Hide the password of a URL (and secret-looking query parameters); other text unchanged."""
    if "://" not in text:
        return text
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}:{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: m.group(1) + MASK, text)


def redacted(config: BrioConfig) -> dict[str, Any]:
    """The effective configuration as a JSON-able dict, with every secret replaced by ``***``.

    "Effective" means defaults filled in, including the database URL that is used when none
    is configured.
    """
    dumped = config.model_dump(mode="json")
    data = _mask(config, dumped)
    assert isinstance(data, dict)
    data["database"]["url"] = redact_text(config.database_url)
    return data


def _mask(value: Any, dumped: Any) -> Any:
    """Walk the model and its JSON dump side by side: ``SecretStr`` and URLs are masked."""
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, BaseModel):
        return {name: _mask(getattr(value, name), dumped[name]) for name in dumped}
    if isinstance(value, dict):
        return {key: _mask(value[key], dumped[key]) for key in dumped}
    if isinstance(value, list):
        return [_mask(item, out) for item, out in zip(value, dumped, strict=True)]
    if isinstance(dumped, str):
        return redact_text(dumped)
    return dumped
