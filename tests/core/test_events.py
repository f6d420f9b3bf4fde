"""The event bus delivers by type and never lets a subscriber break the caller."""

from __future__ import annotations

import logging
import threading

import pytest

from bastion import CallRejected, CircuitStateChanged, Event, EventBus, RetryScheduled, default_bus


def test_subscribers_receive_events_of_their_type_and_subtypes(bus: EventBus) -> None:
    everything: list[Event] = []
    rejections: list[CallRejected] = []
    bus.subscribe(everything.append)
    bus.subscribe(rejections.append, CallRejected)
    rejected = CallRejected(source="a", reason="rate_limited", retry_after=1.0)
    retried = RetryScheduled(source="a", attempt=1, delay=0.5, error_type="ConnectionError")
    bus.emit(rejected)
    bus.emit(retried)
    assert everything == [rejected, retried]
    assert rejections == [rejected]


def test_unsubscribe_stops_delivery(bus: EventBus) -> None:
    seen: list[Event] = []
    unsubscribe = bus.subscribe(seen.append, CallRejected)
    bus.emit(CallRejected(source="a", reason="x"))
    unsubscribe()
    bus.emit(CallRejected(source="a", reason="y"))
    assert len(seen) == 1
    assert not bus.has_subscribers(CallRejected)


def test_failing_subscriber_is_logged_and_skipped(
    bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("exporter down")

    bus.subscribe(broken)
    bus.subscribe(seen.append)
    event = CircuitStateChanged(source="m", from_state="closed", to_state="open", reason="x")
    with caplog.at_level(logging.ERROR, logger="bastion.events"):
        bus.emit(event)
    assert seen == [event]
    assert "exporter down" in caplog.text


def test_clear_removes_everything(bus: EventBus) -> None:
    seen: list[Event] = []
    bus.subscribe(seen.append)
    bus.clear()
    bus.emit(CallRejected(source="a", reason="x"))
    assert seen == []


def test_events_are_immutable() -> None:
    event = CallRejected(source="a", reason="x")
    with pytest.raises(AttributeError):
        event.reason = "y"  # type: ignore[misc]


def test_default_bus_is_one_object() -> None:
    assert default_bus() is default_bus()


def test_concurrent_subscribe_and_emit(bus: EventBus) -> None:
    counts: list[int] = []
    lock = threading.Lock()

    def emitter() -> None:
        for _ in range(500):
            bus.emit(CallRejected(source="t", reason="x"))

    def subscriber(event: Event) -> None:
        with lock:
            counts.append(1)

    bus.subscribe(subscriber)
    threads = [threading.Thread(target=emitter) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(50):
        bus.subscribe(lambda e: None)()
    for thread in threads:
        thread.join()
    assert len(counts) == 2000
