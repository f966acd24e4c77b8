"""Frozen records at the price of plain objects, for what is built once per command.

A ``@dataclass(frozen=True)`` ``__init__`` sets every field through
``object.__setattr__``, about twice the cost of a plain one: with a PDU and an event per
SCSI command that is microseconds of each command's latency. ``record`` is frozen to the
type checker (PEP 681's ``frozen_default``), so assigning to a field is a ``mypy`` error,
and a plain slotted dataclass at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform, overload

_T = TypeVar("_T")


@overload
def record(cls: type[_T], /) -> type[_T]: ...


@overload
def record(*, kw_only: bool = False) -> Callable[[type[_T]], type[_T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(
    cls: type[_T] | None = None, /, *, kw_only: bool = False
) -> type[_T] | Callable[[type[_T]], type[_T]]:
    """``@dataclass(frozen=True, slots=True)`` for the type checker, without the cost."""

    def wrap(cls: type[_T]) -> type[_T]:
        # unsafe_hash: hashable by value, as the frozen dataclass mypy sees would be
        return dataclass(slots=True, kw_only=kw_only, unsafe_hash=True)(cls)

    return wrap if cls is None else wrap(cls)
