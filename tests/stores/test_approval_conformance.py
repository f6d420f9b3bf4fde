"""Approvals are decided at most once, expire on time, and wake their waiters, on every backend.

Parametrised over memory, SQLite, PostgreSQL and Redis (real servers). Every
store reads the test's FakeClock (Redis too: a test clock replaces the
server's), so deadlines pass without sleeping; a wait that returns while the
fake clock stands still was woken by the decision, not by a poll.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from bastion._core.errors import ConfigurationError
from bastion._core.events import EventBus
from bastion.stores._approval_store import (
    Approval,
    ApprovalAlreadyDecided,
    ApprovalMismatch,
    ApprovalNotFound,
    ApprovalRequest,
    ApprovalStore,
    call_hash,
)
from bastion.stores._approvals import ApprovalDecided, ApprovalRequested, Approvals
from bastion.stores._memory import MemoryStore
from bastion.testing import FakeClock

from .conftest import StoreFactory

ARGS = {"to": "ops@example.com", "amount": 125.5, "lines": ["é", {"n": 1}]}


def new_run() -> str:
    return f"run-{uuid.uuid4().hex[:8]}"


def request(approval_id: str, **changes: Any) -> ApprovalRequest:
    fields: dict[str, Any] = {
        "approval_id": approval_id,
        "run_id": "run-1",
        "agent_name": "billing",
        "tool_name": "refund",
        "tool_arguments": ARGS,
        "risk_level": "high",
        "description": "refund 125.50",
        "session_id": None,
    }
    fields.update(changes)
    fields["call_hash"] = call_hash(
        agent_name=fields["agent_name"],
        run_id=fields["run_id"],
        tool_name=fields["tool_name"],
        tool_arguments=fields["tool_arguments"],
    )
    return ApprovalRequest(**fields)


def approvals_on(store: Any, clock: FakeClock, **options: Any) -> Approvals:
    return Approvals(store, clock=clock, bus=options.pop("bus", EventBus()), **options)


async def ask(approvals: Approvals, **changes: Any) -> Approval:
    fields: dict[str, Any] = {
        "run_id": new_run(),
        "agent_name": "billing",
        "tool_name": "refund",
        "tool_arguments": ARGS,
        "description": "refund 125.50",
    }
    fields.update(changes)
    return await approvals.create(**fields)


async def test_the_store_is_an_approval_store(store: Any) -> None:
    assert isinstance(store, ApprovalStore)


async def test_a_created_approval_is_pending_and_reads_back_whole(
    store: Any, clock: FakeClock
) -> None:
    approval, created = await store.create_approval(
        request("apr-1", session_id="s-9"), ttl=60.0, keep_for=600.0
    )
    assert created
    assert approval == await store.get_approval("apr-1")
    assert (approval.status, approval.approved) == ("pending", False)
    assert (approval.created_at, approval.expires_at) == (clock.time(), clock.time() + 60.0)
    assert dict(approval.tool_arguments) == ARGS
    assert (approval.session_id, approval.risk_level, approval.description) == (
        "s-9",
        "high",
        "refund 125.50",
    )
    assert (approval.decided_at, approval.decided_by, approval.reason) == (None, None, None)
    assert await store.get_approval("apr-missing") is None


async def test_creating_an_existing_id_returns_it_unchanged(store: Any, clock: FakeClock) -> None:
    first, _ = await store.create_approval(request("apr-2"), ttl=60.0, keep_for=0.0)
    clock.advance(5.0)
    again, created = await store.create_approval(
        request("apr-2", tool_arguments={"other": 1}), ttl=999.0, keep_for=0.0
    )
    assert not created
    assert again == first


async def test_a_decision_is_recorded_once(store: Any, clock: FakeClock) -> None:
    await store.create_approval(request("apr-3"), ttl=60.0, keep_for=60.0)
    clock.advance(2.0)
    decided, recorded = await store.decide_approval(
        "apr-3", approved=True, by="alice", reason="customer verified"
    )
    assert recorded
    assert decided is not None
    assert (decided.status, decided.decided_by, decided.reason) == (
        "approved",
        "alice",
        "customer verified",
    )
    assert decided.decided_at == clock.time()
    assert await store.get_approval("apr-3") == decided
    late, recorded = await store.decide_approval("apr-3", approved=False, by="bob", reason="")
    assert not recorded
    assert late == decided
    assert await store.decide_approval("apr-none", approved=True, by="x", reason="") == (
        None,
        False,
    )


async def test_twenty_concurrent_decisions_leave_exactly_one(store: Any) -> None:
    await store.create_approval(request("apr-4"), ttl=60.0, keep_for=60.0)
    outcomes = await asyncio.gather(
        *(
            store.decide_approval("apr-4", approved=i % 2 == 0, by=f"op-{i}", reason="")
            for i in range(20)
        )
    )
    winners = [approval for approval, recorded in outcomes if recorded]
    assert len(winners) == 1
    final = await store.get_approval("apr-4")
    assert final == winners[0]
    assert all(approval == final for approval, _ in outcomes)


async def test_an_undecided_approval_expires_at_its_deadline(store: Any, clock: FakeClock) -> None:
    await store.create_approval(request("apr-5"), ttl=10.0, keep_for=100.0)
    clock.advance(9.5)
    assert (await store.get_approval("apr-5")).status == "pending"
    clock.advance(0.5)
    expired = await store.get_approval("apr-5")
    assert expired.status == "expired"
    assert await store.decide_approval("apr-5", approved=True, by="late", reason="") == (
        expired,
        False,
    )


async def test_an_approval_is_purged_after_its_retention(store: Any, clock: FakeClock) -> None:
    await store.create_approval(request("apr-6"), ttl=10.0, keep_for=20.0)
    await store.decide_approval("apr-6", approved=False, by="carol", reason="no")
    clock.advance(29.0)
    assert (await store.get_approval("apr-6")).status == "rejected"
    clock.advance(1.0)
    assert await store.get_approval("apr-6") is None
    fresh, created = await store.create_approval(request("apr-6"), ttl=10.0, keep_for=20.0)
    assert created
    assert fresh.status == "pending"


async def test_list_filters_by_status_and_pages_by_id(store: Any, clock: FakeClock) -> None:
    for n in range(7):
        await store.create_approval(request(f"apr-{n:02d}"), ttl=10.0 + n, keep_for=100.0)
    await store.decide_approval("apr-01", approved=True, by="a", reason="")
    await store.decide_approval("apr-02", approved=False, by="a", reason="")
    clock.advance(12.5)  # apr-00, apr-01 (decided) and apr-02 (decided) are past ttl
    every = await store.list_approvals(status=None, limit=100, cursor=None)
    assert [a.approval_id for a in every.approvals] == [f"apr-{n:02d}" for n in range(7)]
    assert every.next_cursor is None
    by_status = {
        status: [
            a.approval_id
            for a in (await store.list_approvals(status=status, limit=100, cursor=None)).approvals
        ]
        for status in ("pending", "approved", "rejected", "expired")
    }
    assert by_status == {
        "pending": ["apr-03", "apr-04", "apr-05", "apr-06"],
        "approved": ["apr-01"],
        "rejected": ["apr-02"],
        "expired": ["apr-00"],
    }
    first = await store.list_approvals(status="pending", limit=3, cursor=None)
    assert [a.approval_id for a in first.approvals] == ["apr-03", "apr-04", "apr-05"]
    assert first.next_cursor == "apr-05"
    rest = await store.list_approvals(status="pending", limit=3, cursor=first.next_cursor)
    assert [a.approval_id for a in rest.approvals] == ["apr-06"]
    assert rest.next_cursor is None


async def test_scoped_stores_never_see_each_others_approvals(store: Any) -> None:
    tenant_a, tenant_b = store.scoped("a"), store.scoped("b")
    await tenant_a.create_approval(request("apr-7"), ttl=60.0, keep_for=0.0)
    assert await tenant_b.get_approval("apr-7") is None
    assert await store.get_approval("apr-7") is None
    assert await tenant_b.decide_approval("apr-7", approved=True, by="b", reason="") == (
        None,
        False,
    )
    assert (await tenant_b.list_approvals(status=None, limit=10, cursor=None)).approvals == ()
    assert (await tenant_a.get_approval("apr-7")).status == "pending"


# -- the front: Approvals --------------------------------------------------------------------


async def test_the_front_asks_decides_and_emits_events(store: Any, clock: FakeClock) -> None:
    bus = EventBus()
    seen: list[Any] = []
    bus.subscribe(seen.append, ApprovalRequested)
    bus.subscribe(seen.append, ApprovalDecided)
    approvals = approvals_on(store, clock, bus=bus)
    asked = await ask(approvals, risk_level="critical", session_id="s-1")
    assert asked.approval_id.startswith("apr_")
    assert asked.status == "pending"
    decided = await approvals.decide(asked.approval_id, approved=True, by="alice", reason="ok")
    assert decided.permits(
        agent_name="billing", run_id=asked.run_id, tool_name="refund", tool_arguments=dict(ARGS)
    )
    assert not decided.permits(
        agent_name="billing", run_id=asked.run_id, tool_name="refund", tool_arguments={"to": "x"}
    )
    assert not decided.permits(
        agent_name="billing", run_id="other-run", tool_name="refund", tool_arguments=dict(ARGS)
    )
    with pytest.raises(ApprovalAlreadyDecided, match="already approved by 'alice'") as info:
        await approvals.decide(asked.approval_id, approved=False, by="bob")
    assert info.value.status == "approved"
    with pytest.raises(ApprovalNotFound, match="apr-nope"):
        await approvals.decide("apr-nope", approved=True, by="bob")
    assert [type(event).__name__ for event in seen] == ["ApprovalRequested", "ApprovalDecided"]
    assert seen[0].risk_level == "critical"
    assert (seen[1].status, seen[1].decided_by) == ("approved", "alice")
    assert all("ops@example.com" not in repr(event) for event in seen)  # never the arguments


async def test_the_front_is_idempotent_per_id_and_call(store: Any, clock: FakeClock) -> None:
    bus = EventBus()
    requested: list[Any] = []
    bus.subscribe(requested.append, ApprovalRequested)
    approvals = approvals_on(store, clock, bus=bus)
    run = new_run()
    first = await ask(approvals, run_id=run, approval_id="run-step-3")
    again = await ask(approvals, run_id=run, approval_id="run-step-3")
    assert again == first
    assert len(requested) == 1
    with pytest.raises(ApprovalMismatch, match="run-step-3"):
        await ask(approvals, run_id=run, approval_id="run-step-3", tool_arguments={"to": "x"})


async def test_the_front_lists_an_operators_queue(store: Any, clock: FakeClock) -> None:
    approvals = approvals_on(store, clock)
    made = []
    for _ in range(3):
        made.append(await ask(approvals))
        clock.advance(0.01)
    await approvals.decide(made[1].approval_id, approved=False, by="op")
    queue = await approvals.list(status="pending")
    assert [a.approval_id for a in queue.approvals] == [made[0].approval_id, made[2].approval_id]
    page = await approvals.list(limit=2)
    assert [a.approval_id for a in page.approvals] == [a.approval_id for a in made[:2]]
    assert page.next_cursor is not None


async def test_wait_returns_when_the_decision_lands_without_moving_the_clock(
    store: Any, clock: FakeClock
) -> None:
    approvals = approvals_on(store, clock)
    asked = await ask(approvals)
    waiter = asyncio.create_task(approvals.wait(asked.approval_id, timeout=3600.0))
    await clock.wait_for_sleepers(1)
    await approvals.decide(asked.approval_id, approved=True, by="alice")
    async with asyncio.timeout(5):
        decided = await waiter
    assert decided.status == "approved"


async def test_wait_gives_up_after_its_timeout_still_pending(store: Any, clock: FakeClock) -> None:
    approvals = approvals_on(store, clock, poll_interval=1.0)
    asked = await ask(approvals)
    waiter = asyncio.create_task(approvals.wait(asked.approval_id, timeout=2.5))
    for _ in range(3):
        await clock.wait_for_sleepers(1)
        clock.advance(1.0)
    async with asyncio.timeout(5):
        still = await waiter
    assert still.status == "pending"
    assert (await approvals.wait(asked.approval_id, timeout=0)).status == "pending"


async def test_wait_sees_the_deadline_pass(store: Any, clock: FakeClock) -> None:
    approvals = approvals_on(store, clock, ttl=3.0, poll_interval=100.0)
    asked = await ask(approvals)
    waiter = asyncio.create_task(approvals.wait(asked.approval_id, timeout=1000.0))
    await clock.wait_for_sleepers(1)
    clock.advance(3.01)
    async with asyncio.timeout(5):
        expired = await waiter
    assert expired.status == "expired"
    with pytest.raises(ApprovalAlreadyDecided, match="expired undecided"):
        await approvals.decide(asked.approval_id, approved=True, by="late")


async def test_wait_on_an_unknown_id_raises(store: Any, clock: FakeClock) -> None:
    with pytest.raises(ApprovalNotFound):
        await approvals_on(store, clock).wait("apr-unknown", timeout=1.0)


async def test_many_waiters_all_wake_and_leave_nothing_behind(store: Any, clock: FakeClock) -> None:
    approvals = approvals_on(store, clock)
    asked = await ask(approvals)
    waiters = [
        asyncio.create_task(approvals.wait(asked.approval_id, timeout=60.0)) for _ in range(10)
    ]
    await clock.wait_for_sleepers(10)
    await approvals.decide(asked.approval_id, approved=False, by="op", reason="too risky")
    async with asyncio.timeout(5):
        results = await asyncio.gather(*waiters)
    assert {approval.status for approval in results} == {"rejected"}
    assert clock.pending_sleepers == 0


@pytest.mark.parametrize("backend", ["postgresql", "redis"], indirect=True)
async def test_a_decision_in_another_process_wakes_the_waiter_at_once(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """Two stores with their own connections stand for two processes: push, not poll."""
    waiting_side, deciding_side = make_store(clock=clock), make_store(clock=clock)
    approvals = approvals_on(waiting_side, clock, poll_interval=1000.0)
    asked = await ask(approvals)
    waiter = asyncio.create_task(approvals.wait(asked.approval_id, timeout=3600.0))
    await clock.wait_for_sleepers(1)
    await approvals_on(deciding_side, clock).decide(asked.approval_id, approved=True, by="op")
    async with asyncio.timeout(5):
        decided = await waiter
    assert decided.status == "approved"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_sqlite_waiters_in_another_process_see_a_decision_on_their_next_poll(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    waiting_side, deciding_side = make_store(clock=clock), make_store(clock=clock)
    approvals = approvals_on(waiting_side, clock)  # polls every 0.5 s on SQLite
    asked = await ask(approvals)
    waiter = asyncio.create_task(approvals.wait(asked.approval_id, timeout=3600.0))
    await clock.wait_for_sleepers(1)
    assert clock.sleeps == [0.5]
    await approvals_on(deciding_side, clock).decide(asked.approval_id, approved=True, by="op")
    clock.advance(0.5)
    async with asyncio.timeout(5):
        decided = await waiter
    assert decided.status == "approved"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "redis"], indirect=True)
async def test_a_pending_approval_survives_a_restart(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    before = make_store(clock=clock)
    asked = await ask(approvals_on(before, clock))
    await before.aclose()
    after = approvals_on(make_store(clock=clock), clock)
    assert await after.get(asked.approval_id) == asked
    await after.decide(asked.approval_id, approved=True, by="op")
    assert (await after.wait(asked.approval_id, timeout=0)).approved


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda a: ask(a, run_id=""), r"Approvals\.create\(run_id\)"),
        (lambda a: ask(a, agent_name=3), r"Approvals\.create\(agent_name\)"),
        (lambda a: ask(a, tool_name=""), r"Approvals\.create\(tool_name\)"),
        (lambda a: ask(a, risk_level="extreme"), r"Approvals\.create\(risk_level\)"),
        (lambda a: ask(a, tool_arguments=["x"]), r"Approvals\.create\(tool_arguments\) must be"),
        (lambda a: ask(a, tool_arguments={"x": object()}), r"create\(tool_arguments\)"),
        (lambda a: ask(a, description=None), r"Approvals\.create\(description\)"),
        (lambda a: ask(a, session_id=""), r"Approvals\.create\(session_id\)"),
        (lambda a: ask(a, approval_id=""), r"Approvals\.create\(approval_id\)"),
        (lambda a: a.decide("x", approved="yes", by="op"), r"decide\(approved\) must be True"),
        (lambda a: a.decide("x", approved=True, by=""), r"Approvals\.decide\(by\)"),
        (lambda a: a.list(status="open"), r"Approvals\.list\(status\)"),
        (lambda a: a.list(limit=0), r"Approvals\.list\(limit\)"),
        (lambda a: a.list(cursor=5), r"Approvals\.list\(cursor\)"),
        (lambda a: a.wait("x", timeout=-1), r"Approvals\.wait\(timeout\)"),
        (lambda a: a.get(""), r"Approvals\.get\(approval_id\)"),
    ],
)
async def test_the_front_rejects_bad_arguments(call: Any, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        await call(Approvals(MemoryStore()))


async def test_bad_arguments_are_never_shown_in_the_error() -> None:
    approvals = Approvals(MemoryStore())
    with pytest.raises(ConfigurationError, match="contents not shown") as caught:
        await ask(approvals, tool_arguments={"api_key": "sk-secret-123", "x": object()})
    assert "sk-secret-123" not in str(caught.value)


def test_the_front_rejects_a_bad_store_or_option() -> None:
    with pytest.raises(ConfigurationError, match=r"Approvals\(store\)"):
        Approvals(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"Approvals\.ttl"):
        Approvals(MemoryStore(), ttl=0)
    with pytest.raises(ConfigurationError, match=r"Approvals\.keep_for"):
        Approvals(MemoryStore(), keep_for=-1)
    with pytest.raises(ConfigurationError, match=r"Approvals\.poll_interval"):
        Approvals(MemoryStore(), poll_interval=0)


def test_the_call_hash_ignores_key_order_but_not_values() -> None:
    one = call_hash(agent_name="a", run_id="r", tool_name="t", tool_arguments={"x": 1, "y": 2})
    same = call_hash(agent_name="a", run_id="r", tool_name="t", tool_arguments={"y": 2, "x": 1})
    other = call_hash(agent_name="a", run_id="r", tool_name="t", tool_arguments={"x": 1, "y": 3})
    assert one == same != other
    assert len(one) == 64


@pytest.mark.parametrize("backend", ["postgresql", "redis"], indirect=True)
async def test_a_subscription_cut_short_leaves_nothing_half_open(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    waiting_side, deciding_side = make_store(clock=clock), make_store(clock=clock)
    listener = waiting_side._shared.listener
    opening = asyncio.create_task(listener.ensure())
    await asyncio.sleep(0)  # inside the open, at its first round trip
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    assert not listener.listening()
    approvals = approvals_on(waiting_side, clock, poll_interval=1000.0)
    asked = await ask(approvals)
    waiter = asyncio.create_task(approvals.wait(asked.approval_id, timeout=3600.0))
    await clock.wait_for_sleepers(1, max_yields=1_000_000)
    await approvals_on(deciding_side, clock).decide(asked.approval_id, approved=True, by="op")
    async with asyncio.timeout(5):  # the next wait subscribed afresh and heard it
        assert (await waiter).approved


async def test_a_very_long_id_is_decided_and_wakes_its_waiter(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """Ids longer than PostgreSQL's 8000-byte NOTIFY payload still announce their decision."""
    waiting_side = make_store(clock=clock)
    deciding_side = waiting_side if waiting_side.backend == "memory" else make_store(clock=clock)
    approvals = approvals_on(waiting_side, clock)
    asked = await ask(approvals, approval_id="apr-" + "x" * 9000)
    waiter = asyncio.create_task(approvals.wait(asked.approval_id, timeout=3600.0))
    await clock.wait_for_sleepers(1, max_yields=1_000_000)
    await approvals_on(deciding_side, clock).decide(asked.approval_id, approved=True, by="op")
    if waiting_side.backend == "sqlite":
        clock.advance(5.0)  # no push between these two stores: the next poll sees it
    async with asyncio.timeout(5):
        assert (await waiter).approved


@pytest.mark.parametrize(
    "changes",
    [{"tool_arguments": {"text": "bad \udcff"}}, {"description": "bad \udcff"}],
)
async def test_text_that_is_not_unicode_is_refused_without_showing_it(
    changes: dict[str, Any],
) -> None:
    with pytest.raises(ConfigurationError, match="contents not shown"):
        await ask(Approvals(MemoryStore()), **changes)
