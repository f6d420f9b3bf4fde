"""``bastion chaos-server``: the chaos LLM server as a process, for testing agents in any language.

Point any OpenAI- or Anthropic-compatible client at it, run your agent, and
watch how it behaves when the provider throttles, fails, stalls or cuts a
stream short. The scenario comes from a JSON or TOML file (see
``docs/chaos-server.md``); without one, every request gets a normal answer.
"""

from __future__ import annotations

import threading
from pathlib import Path

from bastion.testing._chaos import ChaosServer

__all__ = ["chaos_server_command"]


def chaos_server_command(
    host: str = "127.0.0.1", port: int = 8900, scenario_file: str | Path | None = None
) -> None:
    """Serve until Ctrl-C, after printing the URL (``port=0`` picks a free port)."""
    if scenario_file is not None:
        server = ChaosServer.from_file(scenario_file, host=host, port=port)
    else:
        server = ChaosServer(host=host, port=port)
    with server:
        print(f"Chaos LLM server listening on {server.url}", flush=True)
        print(f"  OpenAI:    POST {server.url}/v1/chat/completions", flush=True)
        print(f"  Anthropic: POST {server.url}/v1/messages", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print(f"Stopped after {len(server.requests)} request(s).", flush=True)
