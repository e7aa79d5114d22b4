"""Reading a request's JSON body, query and path into the route's pydantic models.

Every refusal is a precise 422 naming the field, raised before anything reaches the store: a
value the store cannot hold must never come back as a 503 (PostgreSQL refuses it) or as
invalid JSON later (SQLite keeps it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from quart import request

from brio.api.errors import ApiError, validation_error
from brio.api.models import MAX_NUMBER

M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: Any, where: str, prefix: str = "") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, where, prefix) from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _text_fault(value: str) -> str | None:
    if "\x00" in value:
        return "NUL characters are not allowed"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "lone surrogates are not allowed (not Unicode text)"
    return None


def unstorable(value: Any, path: str) -> tuple[str, str] | None:
    """Where in ``value`` something neither store keeps as given hides, and what it is.

    The rules ``models.JsonValue`` documents: no NUL characters or lone surrogates in
    strings or keys, numbers within a double's range (``1e400`` parses as infinity).
    """
    if isinstance(value, str):
        fault = _text_fault(value)
        return (path or "(body)", fault) if fault else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float | int):
        if (isinstance(value, float) and not math.isfinite(value)) or abs(value) > MAX_NUMBER:
            return (path or "(body)", f"numbers must be within ±{MAX_NUMBER!r}")
        return None
    items: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            fault = _text_fault(key)
            if fault:
                return (f"{path}.{key!r}".lstrip("."), f"keys: {fault}")
            items.append((f"{path}.{key}".lstrip("."), item))
    elif isinstance(value, list):
        items = [(f"{path}[{i}]", item) for i, item in enumerate(value)]
    for where, item in items:
        found = unstorable(item, where)
        if found is not None:
            return found
    return None


def check_storable(data: Any, where: str, path: str = "") -> None:
    """A precise 422 if ``data`` (found at ``path`` in the body) holds what no store keeps."""
    try:
        bad = unstorable(data, path)
    except RecursionError:
        raise ApiError(422, "invalid_json", f"the {where} is nested too deeply") from None
    if bad is not None:
        field, message = bad
        raise ApiError(
            422,
            "validation_error",
            f"invalid {where}: {field}: {message}",
            [{"field": field, "message": message}],
        )


def parse_json_object(raw: bytes | str, where: str, *, storable: bool = True) -> dict[str, Any]:
    """Strict JSON (no NaN/Infinity), an object, storable everywhere (unless ``storable`` is
    False: the caller checks the parts); else a precise 422."""
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(422, "invalid_json", f"the {where} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(422, "invalid_json", f"the {where} is nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_body", f"the {where} must be a JSON object")
    if storable:
        check_storable(data, where)
    return data


def read_item(model: type[M], data: Any, path: str) -> M:
    """One item of a batch body, found at ``path`` (``tasks[3]``), as ``model``: checked as a
    body of its own would be, its faults named by their place in the whole body."""
    check_storable(data, "request body", path)
    return validate(model, data, "request body", path)


JSON = "application/json"


def _announces_body() -> bool:
    length = request.headers.get("Content-Length", "").strip()
    return "Transfer-Encoding" in request.headers or (length not in ("", "0"))


async def read_body(model: type[M], *, required: bool) -> M:
    """The body as ``model``: JSON sent as ``application/json`` (415 otherwise, before it is
    read, so a browser's ``text/plain`` form post never gets this far), then validated."""
    if _announces_body() and request.mimetype != JSON:
        given = request.headers.get("Content-Type", "")
        raise ApiError(
            415,
            "unsupported_media_type",
            f"the request body must be sent with Content-Type: {JSON}"
            + (f", not {given!r}" if given else " (none was given)"),
            {"expected": JSON, "content_type": given or None},
        )
    raw = await request.get_data(cache=False, as_text=False)
    if not required and not raw:
        return validate(model, {}, "request body")
    if not raw:
        raise ApiError(422, "invalid_body", "the request body must be a JSON object")
    # A batch's items are checked one by one (``read_item``): each fault is that item's own.
    storable = not getattr(model, "checks_items_apart", False)
    return validate(
        model, parse_json_object(raw, "request body", storable=storable), "request body"
    )


def read_query(model: type[M]) -> M:
    return validate(model, dict(request.args.items()), "query parameters")


def read_path(model: type[M], view_args: Mapping[str, Any]) -> M:
    return validate(model, dict(view_args), "path")
