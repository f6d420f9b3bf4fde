"""N processes x M tasks share one limiter and one budget through a real store.

Each worker (``tests/stores/_hammer.py``) records the store's own time of
every call it was admitted; the test then checks every window over the union
of all workers: no interval of ``window`` seconds (sliding) and no fixed
window ever holds more than the limit, and the $1 budget never settles more
than $1.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bastion.stores._fixed_window import window_index

from .conftest import POSTGRES_URL, REDIS_URL, RUN, SHARED_BACKENDS

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 4
LIMIT = 12.0
WINDOW = 0.2


def _options(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    options: dict[str, Any] = {
        "namespace": f"bastion-test-{RUN}",
        "scope": f"mp-{uuid.uuid4().hex[:8]}",
        "limit": LIMIT,
        "window": WINDOW,
        "duration": 0.7,
        "tasks": 4,
        "reservations": 25,
    }
    if backend == "sqlite":
        options["url"] = f"sqlite:///{tmp_path / 'shared.db'}"
    elif backend == "postgresql":
        options["url"] = POSTGRES_URL
        options["schema"] = request.getfixturevalue("postgres_schema")
    else:
        request.getfixturevalue("redis_url")
        options["url"] = REDIS_URL
    return options


def _run_workers(options: dict[str, Any]) -> list[dict[str, Any]]:
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.stores._hammer", json.dumps({**options, "seed": n})],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(PROCESSES)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline()
            assert line.strip() == "ready", worker.communicate(timeout=30)[1]
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = []
        for worker in workers:
            out, err = worker.communicate(timeout=40)
            assert worker.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def _worst_sliding_window(times: list[float]) -> int:
    """The most admissions inside any interval [t, t + WINDOW) starting at an admission."""
    times = sorted(times)
    worst, j = 0, 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + WINDOW:
            j += 1
        worst = max(worst, j - i)
    return worst


@pytest.mark.parametrize("backend", SHARED_BACKENDS)
def test_many_processes_never_exceed_the_limit_or_the_budget(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    request.applymarker(getattr(pytest.mark, backend))
    options = _options(backend, tmp_path, request)
    results = _run_workers(options)

    sliding = [t for r in results for t in r["admitted"]["sliding"]]
    fixed = [t for r in results for t in r["admitted"]["fixed"]]
    span = max(sliding) - min(sliding)
    assert span > 2 * WINDOW, "the run must cover several windows to prove anything"
    assert len(sliding) >= 2 * LIMIT
    assert sum(r["refused"]["sliding"] for r in results) > 0
    assert _worst_sliding_window(sliding) <= LIMIT
    assert _worst_sliding_window(sliding) == LIMIT  # the limiter really was saturated

    per_window: dict[int, int] = {}
    for t in fixed:
        index = window_index(t, WINDOW)
        per_window[index] = per_window.get(index, 0) + 1
    assert max(per_window.values()) <= LIMIT
    assert sum(r["refused"]["fixed"] for r in results) > 0

    settled = [Decimal(s) for r in results for s in r["settled"]]
    assert sum(settled, Decimal(0)) <= Decimal(1)
    assert len(settled) < PROCESSES * options["reservations"]  # some were refused
