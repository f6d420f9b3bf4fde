"""A shared store dies mid-run: typed error within the timeout, declared fail mode, recovery.

These tests start their own throwaway Redis and PostgreSQL servers on free
ports, so they can kill, freeze and restart them without touching the shared
test servers. Readiness is read from the servers themselves (Redis's "Ready"
log line, ``pg_ctl -w``), never waited for with sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bastion import EventBus, RateLimitConfig, RateLimiter, StoreUnavailableError
from bastion.stores import (
    Approvals,
    BudgetConfig,
    BudgetEnforcer,
    StoreDegraded,
    WindowSpec,
    open_store,
)
from bastion.testing import FakeClock

TIMEOUT = 0.5
SPEC = WindowSpec(limits=(100,), window=60, name="faults")
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A redis-server on its own port that a test may kill, freeze and restart."""

    def __init__(self, *, persist_in: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[str] | None = None
        self.persistence = ["--appendonly", "no"]
        if persist_in is not None:  # every write on disk before it is acknowledged
            self.persistence = [
                *("--appendonly", "yes", "--appendfsync", "always"),
                *("--dir", str(persist_in)),
            ]

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *self.persistence,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if "Ready to accept connections" in line:
                return
        pytest.fail(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        self.process.kill()
        self.process.wait()
        self.process.stdout.close()

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A throwaway Redis that keeps an append-only file, so a restart keeps its data."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(persist_in=tmp_path)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.thaw()
        server.kill()


class PostgresServer:
    """A throwaway PostgreSQL cluster in a world-readable temp dir, run as ``postgres``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="bastion-pg-"))
        self.dir.chmod(0o777)
        self.data = self.dir / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(PG_BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "--no-sync", "-U", "postgres")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-w",
            "-l",
            str(self.dir / "log"),
            "-o",
            options,
            "start",
        )

    def crash(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.crash()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL binaries are not installed in {PG_BIN}")
    server = PostgresServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()


async def eventually(make_call: Any, attempts: int = 3) -> Any:
    """The first success among a few calls: the first one after a restart may meet a
    connection the server closed, which is reported (as unavailable) and then dropped."""
    for _ in range(attempts - 1):
        try:
            return await make_call()
        except StoreUnavailableError:
            continue
    return await make_call()


async def check_fault_handling(store: Any, crash: Any, restart: Any, bus: EventBus) -> None:
    events: list[StoreDegraded] = []
    bus.subscribe(events.append, StoreDegraded)
    config = RateLimitConfig(max_rpm=100, window=60)
    fail_open = RateLimiter(config, name="open", bus=bus, backend=store)
    fail_closed = RateLimiter(
        RateLimitConfig(max_rpm=100, window=60, on_store_failure="closed"),
        name="closed",
        bus=bus,
        backend=store,
    )
    budget = BudgetEnforcer(BudgetConfig(max_usd_per_month=Decimal(5)), store=store, bus=bus)

    assert (await store.rate_limit("k", (1.0,), SPEC)).allowed
    held = await budget.reserve(Decimal("0.5"))
    await held.settle(Decimal("0.25"))

    crash()
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as caught:
        await store.rate_limit("k", (1.0,), SPEC)
    assert time.monotonic() - started < TIMEOUT + 0.5  # within the store's timeout
    assert caught.value.backend == store.backend
    assert caught.value.operation == "rate_limit"

    assert (await fail_open.acquire("k")).allowed  # fail-open: the call goes through
    with pytest.raises(StoreUnavailableError):
        await fail_closed.acquire("k")  # fail-closed: refused with the typed error
    with pytest.raises(StoreUnavailableError):
        await budget.reserve(Decimal("0.1"))  # budgets fail closed by default
    assert [(e.source, e.action) for e in events] == [
        ("open", "allowed"),
        ("closed", "refused"),
        ("budget", "refused"),
    ]

    restart()
    assert (await eventually(lambda: store.rate_limit("k", (1.0,), SPEC))).allowed
    assert (await fail_closed.acquire("k")).allowed
    held = await budget.reserve(Decimal("0.1"))
    await held.release()


@pytest.mark.redis
async def test_redis_killed_mid_run(redis_server: RedisServer, bus: EventBus) -> None:
    store = open_store(redis_server.url, timeout=TIMEOUT)
    try:
        await check_fault_handling(store, redis_server.kill, redis_server.start, bus)
    finally:
        await store.aclose()


@pytest.mark.redis
async def test_a_frozen_redis_times_out_instead_of_hanging(redis_server: RedisServer) -> None:
    store = open_store(redis_server.url, timeout=TIMEOUT)
    try:
        assert (await store.rate_limit("k", (1.0,), SPEC)).allowed
        redis_server.freeze()
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=r"no answer within 0\.5s"):
            await store.rate_limit("k", (1.0,), SPEC)
        assert time.monotonic() - started < TIMEOUT + 0.5
        redis_server.thaw()
        assert (await eventually(lambda: store.rate_limit("k", (1.0,), SPEC))).allowed
    finally:
        redis_server.thaw()
        await store.aclose()


@pytest.mark.postgresql
async def test_postgres_killed_mid_run(postgres_server: PostgresServer, bus: EventBus) -> None:
    from bastion.stores._sql import upgrade

    await upgrade(postgres_server.url)
    store = open_store(postgres_server.url, timeout=TIMEOUT)
    try:
        await check_fault_handling(store, postgres_server.crash, postgres_server.start, bus)
    finally:
        await store.aclose()


@pytest.mark.sqlite
async def test_a_locked_sqlite_file_times_out_instead_of_hanging(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "locked.db"
    store = open_store(f"sqlite:///{path}", timeout=TIMEOUT)
    try:
        assert (await store.rate_limit("k", (1.0,), SPEC)).allowed
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StoreUnavailableError):
            await store.rate_limit("k", (1.0,), SPEC)
        other.execute("ROLLBACK")
        other.close()
        assert (await store.rate_limit("k", (1.0,), SPEC)).allowed
    finally:
        await store.aclose()


async def parked(clock: FakeClock) -> None:
    """Return once a waiter sleeps on ``clock`` again (after real I/O such as a reconnect)."""
    async with asyncio.timeout(10):
        # FakeClock has no event for "someone sleeps now"; the reconnect in between is real I/O.
        while clock.pending_sleepers < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def check_waiter_recovers(url: str, crash: Any, restart: Any) -> None:
    """A waiter outlives a server restart: it hears the next decision pushed, not polled."""
    clock = FakeClock()
    waiting, deciding = open_store(url, timeout=TIMEOUT), open_store(url, timeout=TIMEOUT)
    try:
        approvals = Approvals(waiting, clock=clock, poll_interval=2.0, bus=EventBus())
        asked = await approvals.create(
            run_id="r", agent_name="a", tool_name="delete_repo", tool_arguments={"repo": "x"}
        )
        waiter = asyncio.create_task(approvals.wait(asked.approval_id, timeout=3600.0))
        await parked(clock)

        crash()
        restart()
        for _ in range(3):  # a read that meets a connection the crash closed is tried again
            clock.advance(2.0)  # the waiter's next poll: it reads again and listens anew
            await parked(clock)
        assert not waiter.done()
        await eventually(deciding.ping)

        await Approvals(deciding, bus=EventBus()).decide(asked.approval_id, approved=True, by="op")
        async with asyncio.timeout(5):  # pushed: the fake clock does not move
            decided = await waiter
        assert decided.approved
    finally:
        await waiting.aclose()
        await deciding.aclose()


@pytest.mark.redis
async def test_an_approval_waiter_rides_out_a_redis_restart(redis_server: RedisServer) -> None:
    await check_waiter_recovers(redis_server.url, redis_server.kill, redis_server.start)


@pytest.mark.postgresql
async def test_an_approval_waiter_rides_out_a_postgres_restart(
    postgres_server: PostgresServer,
) -> None:
    from bastion.stores._sql import upgrade

    await upgrade(postgres_server.url)
    await check_waiter_recovers(postgres_server.url, postgres_server.crash, postgres_server.start)


@pytest.mark.redis
async def test_a_lost_subscription_backs_off_logs_once_and_reopens(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()  # the store's test clock also paces the listener's backoff
    store = open_store(redis_server.url, timeout=TIMEOUT, clock=clock)
    listener = store._shared.listener
    try:
        await listener.ensure()
        assert listener.listening()
        redis_server.kill()
        async with asyncio.timeout(5):  # the reader sees its connection close
            await asyncio.shield(listener._task)
        with caplog.at_level(logging.INFO, logger="bastion.stores"):
            await listener.ensure()  # fails: logged, and a backoff of 1 s starts
            redis_server.start()
            await listener.ensure()  # within the backoff: nobody tries
            assert not listener.listening()
            clock.advance(1.0)
            await listener.ensure()
        assert listener.listening()
        lines = [r.getMessage() for r in caplog.records if "subscri" in r.getMessage()]
        assert len(lines) == 2
        assert lines[0].startswith(f"redis: cannot subscribe to {listener.channel} (")
        assert lines[1] == f"redis: subscribed to {listener.channel} again"
    finally:
        await store.aclose()
    await listener.ensure()  # a closed store never subscribes again
    assert not listener.listening()


@pytest.mark.redis
async def test_only_one_waiter_reopens_and_none_waits_past_its_budget(
    redis_server: RedisServer,
) -> None:
    store = open_store(redis_server.url, timeout=TIMEOUT)
    listener = store._shared.listener
    try:
        redis_server.freeze()  # connections hang: an open can only time out
        started = time.monotonic()
        await asyncio.gather(*(listener.ensure(0.2) for _ in range(10)))
        assert time.monotonic() - started < 0.2 + 0.3  # one bounded try, the rest skipped
        assert not listener.listening()
    finally:
        redis_server.thaw()
        await store.aclose()
