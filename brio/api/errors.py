"""The API's one error shape: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

# pydantic error types that are API error codes of their own (raised by validators in
# brio.api.models as PydanticCustomError): a request whose only fault is one of these gets that
# code and ``{"field": name}`` instead of the generic ``validation_error`` list.
CODED = frozenset({"invalid_cursor"})


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


def _field(loc: tuple[int | str, ...], prefix: str = "") -> str:
    inner = ".".join(str(part) for part in loc)
    if prefix:
        return f"{prefix}.{inner}" if inner else prefix
    return inner or "(body)"


def validation_error(exc: ValidationError, where: str, prefix: str = "") -> ApiError:
    """A 422 naming every bad field, what was wrong, and (when short) what was given.

    ``prefix`` names where the validated value sits in the body (``tasks[3]`` for an item of a
    batch), so the fields are those of the whole body."""
    errors = exc.errors(include_url=False, include_context=False)
    if len(errors) == 1 and errors[0]["type"] in CODED:
        err = errors[0]
        return ApiError(422, err["type"], err["msg"], {"field": _field(err["loc"], prefix)})
    details = []
    for err in errors:
        item: dict[str, Any] = {"field": _field(err["loc"], prefix), "message": err["msg"]}
        if err["type"] != "missing":
            item["input"] = repr(err["input"])[:100]
        details.append(item)
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return ApiError(422, "validation_error", f"invalid {where}: {summary}", details)
