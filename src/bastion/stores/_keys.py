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
