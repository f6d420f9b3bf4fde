"""open_store picks the backend from the URL, imports drivers lazily, and explains mistakes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import bastion.stores
from bastion import ConfigurationError
from bastion.stores import MemoryStore, RedisStore, Store, open_store
from bastion.stores._keys import scope_path


async def test_each_scheme_builds_its_backend(tmp_path: Path) -> None:
    from bastion.stores import SQLStore

    stores: list[Any] = [
        open_store("memory://"),
        open_store(f"sqlite:///{tmp_path / 'a.db'}"),
        open_store("postgresql://postgres@127.0.0.1:1/db"),
        open_store("redis://127.0.0.1:1/0"),
    ]
    try:
        assert isinstance(stores[0], MemoryStore)
        assert isinstance(stores[1], SQLStore)
        assert isinstance(stores[2], SQLStore)
        assert isinstance(stores[3], RedisStore)
        assert [s.backend for s in stores] == ["memory", "sqlite", "postgresql", "redis"]
        assert all(isinstance(s, Store) for s in stores)
    finally:
        for store in stores:
            await store.aclose()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("mysql://localhost/db", r"no store for URL scheme 'mysql'.*known schemes: memory://"),
        ("bastion.db", "a store URL looks like"),
        ("memory://somewhere", "takes no host"),
        ("sqlite://", "in-memory database"),
        ("sqlite:///:memory:", "in-memory database"),
    ],
)
def test_bad_urls_are_explained(url: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        open_store(url)


def test_a_postgres_schema_is_refused_for_sqlite(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="schema is for PostgreSQL"):
        open_store(f"sqlite:///{tmp_path / 'a.db'}", schema="x")


def test_timeouts_are_validated() -> None:
    with pytest.raises(ConfigurationError, match=r"RedisStore.timeout must be"):
        open_store("redis://127.0.0.1:1/0", timeout=0)


def test_a_missing_driver_names_the_extra_to_install() -> None:
    code = (
        "import sys; sys.modules['redis'] = None; sys.modules['redis.asyncio'] = None\n"
        "from bastion.stores import open_store\n"
        "try:\n"
        "    open_store('redis://localhost:6379/0')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'bastion[redis]'" in out.stdout


def test_importing_bastion_does_not_import_sqlalchemy_or_drivers() -> None:
    code = (
        "import sys, bastion, bastion.stores\n"
        "drivers = ('sqlalchemy', 'redis', 'asyncpg', 'alembic')\n"
        "print(sorted(m for m in drivers if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_lazy_names_resolve_and_unknown_ones_fail() -> None:
    assert bastion.stores.SQLStore.__name__ == "SQLStore"
    assert callable(bastion.stores.upgrade)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bastion.stores.nope  # noqa: B018
    assert set(bastion.stores.__all__) >= {"SQLStore", "upgrade", "open_store"}


def test_scope_paths_cannot_collide() -> None:
    paths = {
        scope_path(scopes)
        for scopes in [(), ("a",), ("b",), ("a", "b"), ("a/b",), ("a:b",), ("a/",), ("%2F",)]
    }
    assert len(paths) == 8
    with pytest.raises(ConfigurationError, match="non-empty string"):
        MemoryStore().scoped("")


async def test_memory_store_basics() -> None:
    async with MemoryStore() as store:
        await store.ping()
        assert repr(store.scoped("t")) == "MemoryStore(scope=('t',))"


def test_state_and_cache_stores_accept_the_same_urls() -> None:
    from bastion.stores._factory import CACHE_SCHEMES, SCHEMES

    assert set(CACHE_SCHEMES) == set(SCHEMES)
