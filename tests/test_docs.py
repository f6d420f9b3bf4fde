"""Every ```python block in README.md and docs/ runs as written: docs that lie fail CI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md"))
README = ROOT / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks() -> list[tuple[str, str]]:
    found = []
    for page in [README, *PAGES]:
        for number, match in enumerate(BLOCK.finditer(page.read_text()), start=1):
            found.append((f"{page.name}#{number}", match.group(1)))
    return found


def test_every_capability_has_a_page_with_an_example() -> None:
    pages = {page.stem for page in PAGES}
    expected = {
        "with-resilience",
        "retry",
        "circuit-breaker",
        "timeout",
        "bulkhead",
        "rate-limiting",
        "fallback",
        "health-and-shutdown",
        "events",
        "errors",
        "testing",
        "providers",
        "chaos-server",
        "fallback-chains",
        "tokens-and-cost",
        "context-window",
        "caching",
        "agents",
        "stores",
        "distributed-rate-limiting",
        "budgets",
        "redis-and-postgres",
        "idempotency",
        "audit-log",
        "checkpoints",
        "sessions",
        "approvals",
    }
    assert expected <= pages
    with_examples = {name.split("#")[0].removesuffix(".md") for name, _ in blocks()}
    assert "README" in with_examples
    assert expected <= with_examples


@pytest.mark.parametrize(("name", "code"), blocks(), ids=[name for name, _ in blocks()])
def test_example_runs(name: str, code: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"


def test_readme_quickstart_is_the_ci_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^```sh\n(.*?)\n```", readme, re.S | re.M)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in ci
    assert any("bastion demo" in c for c in commands)
