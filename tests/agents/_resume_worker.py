"""A checkpointed agent run in a process of its own, for the kill -9 test in test_resume.py.

``python _resume_worker.py DATABASE RUN_ID WORKDIR KILL_AT`` runs an agent whose
model asks for the tool ``record`` at steps 1 to ``STEPS`` and then answers.
Every model call appends the step it serves to ``WORKDIR/model-calls``; every
tool call appends its step to ``WORKDIR/effects`` and, the first time it runs
at step ``KILL_AT``, kills its own process with SIGKILL -- no cleanup, no
``finally``, exactly what a crashed or OOM-killed worker leaves behind. The
marker ``WORKDIR/killed`` makes that happen once. The run's result is printed
as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from bastion.agents import Agent, RunResult
from bastion.models import ChatRequest, Reply, ScriptedModel
from bastion.stores import Checkpoints, open_store

STEPS = 4
"""Tool steps before the answer: the answer is step STEPS + 1."""


def build_agent(workdir: Path, *, kill_at: int, checkpoints: Checkpoints | None) -> Agent:
    def record(step: int) -> str:
        """Record that a step ran."""
        with (workdir / "effects").open("a") as effects:
            effects.write(f"{step}\n")
        marker = workdir / "killed"
        if step == kill_at and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return f"step {step} recorded"

    def plan(request: ChatRequest) -> str | Reply:
        step = 1 + sum(message.role == "assistant" for message in request.messages)
        with (workdir / "model-calls").open("a") as calls:
            calls.write(f"{step}\n")
        if step <= STEPS:
            return Reply.tool("record", json.dumps({"step": step}), call_id=f"call-{step}")
        return f"all {STEPS} steps recorded"

    return Agent(
        name="recorder",
        model=ScriptedModel([plan]),
        instructions="Record every step.",
        tools=[record],
        checkpoints=checkpoints,
    )


def summary(result: RunResult) -> dict[str, object]:
    """What the test compares between a resumed run and one that never stopped."""
    return {
        "output": result.output,
        "steps": result.steps,
        "finish_reason": result.finish_reason,
        "run_id": result.run_id,
        "usage": [result.usage.input_tokens, result.usage.output_tokens],
        "messages": [[message.role, message.content] for message in result.messages],
    }


async def main(database: str, run_id: str, workdir: Path, kill_at: int) -> None:
    store = open_store(f"sqlite:///{database}")
    try:
        agent = build_agent(workdir, kill_at=kill_at, checkpoints=Checkpoints(store))
        result = await agent.run("Record the steps.", run_id=run_id)
    finally:
        await store.aclose()
    print(json.dumps(summary(result)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])))
