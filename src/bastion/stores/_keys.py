"""How scopes and names become key prefixes that can never collide.

Multi-tenancy rests on one promise: a store scoped to ``"tenant-a"`` never
reads or writes a key of a store scoped to ``"tenant-b"`` -- nor of the
unscoped store, nor of ``"tenant-a"``'s own sub-scopes. Gluing strings with a
separator breaks that as soon as a name contains the separator (scope
``"a"`` + key ``"b:c"`` against scope ``"a:b"`` + key ``"c"``). So every scope
name and every component name is percent-encoded (no ``/`` or ``:`` survives
inside one), each scope ends with ``/``, and the scope path ends with ``:``.
The key itself comes last and needs no encoding: everything before it is
unambiguous.
"""

from __future__ import annotations

import abc
import copy
from typing import Self
from urllib.parse import quote

from bastion._core.validate import invalid

__all__ = ["check_scope", "escape", "scope_path"]


def escape(part: str) -> str:
    """``part`` with every character that could act as a separator percent-encoded."""
    return quote(part, safe="")


def check_scope(name: object) -> str:
    """A scope name: any non-empty string (it is encoded, so any character is safe)."""
    if not isinstance(name, str) or not name:
        invalid("scoped(name)", "a non-empty string such as a tenant id", name)
    return name


def scope_path(scopes: tuple[str, ...]) -> str:
    """The prefix of every key of a store scoped to ``scopes`` (outermost first)."""
    return "".join(escape(scope) + "/" for scope in scopes) + ":"


class ScopedView(abc.ABC):
    """What every store backend shares: a scope, scoped views, and ``async with``.

    A view is a shallow copy that shares its store's connections and state;
    only the scope -- and the key prefix derived from it -- differs. Closing
    any view closes the shared connections.
    """

    __slots__ = ("_prefix", "_scope")

    _scope: tuple[str, ...]
    _prefix: str

    @property
    def scope(self) -> tuple[str, ...]:
        return self._scope

    def scoped(self, name: str) -> Self:
        view = copy.copy(self)
        view._scope = (*self._scope, check_scope(name))
        view._rescope()
        return view

    def _rescope(self) -> None:
        """Derive the key prefix from the scope (a backend with another key layout overrides)."""
        self._prefix = scope_path(self._scope)

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the store's connections (shared by every view)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
