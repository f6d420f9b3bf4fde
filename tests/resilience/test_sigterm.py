"""SIGTERM drains in-flight runs before the process ends -- checked on a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGTERM is a POSIX signal")

SCRIPT = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from bastion import ShuttingDownError, with_resilience

    async def slow(question):
        await asyncio.sleep(0.3)
        print("finished", question, flush=True)
        return question

    async def main():
        agent = with_resilience(slow, shutdown_timeout=5)
        running = asyncio.create_task(agent.run("in-flight"))
        await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.05)
        try:
            await agent.run("late")
        except ShuttingDownError:
            print("refused late", flush=True)
        await running
        await asyncio.sleep(5)
        print("not reached", flush=True)

    asyncio.run(main())
    """
)


def run_script(source: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=30, check=False
    )


def test_sigterm_waits_for_runs_in_flight_then_ends_the_process() -> None:
    result = run_script(SCRIPT)
    assert result.stdout.splitlines() == ["refused late", "finished in-flight"], result.stderr
    assert result.returncode == -signal.SIGTERM


def test_sigterm_handler_is_not_installed_over_someone_elses() -> None:
    source = SCRIPT.replace(
        "async def main():",
        "async def main():\n"
        "    signal.signal(signal.SIGTERM, lambda *a: print('user handler', flush=True))",
    ).replace("await asyncio.sleep(5)", "await asyncio.sleep(0.1)")
    result = run_script(source)
    # The user's handler ran; Bastion stayed out of the way and nothing was drained.
    assert "user handler" in result.stdout
    assert "refused late" not in result.stdout
    assert "finished late" in result.stdout
    assert result.returncode == 0, result.stderr
