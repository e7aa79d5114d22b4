"""Helpers for the exception groups that trio's nurseries raise."""

from __future__ import annotations


def leaves(exc: BaseException) -> list[BaseException]:
    """The plain exceptions inside ``exc``, however deeply nurseries grouped them."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]
