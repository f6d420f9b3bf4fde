"""The command line: version and the demo, run as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bastion


def bastion_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from bastion._cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version() -> None:
    result = bastion_cli("version")
    assert result.returncode == 0
    assert result.stdout.strip() == bastion.__version__


def test_no_arguments_shows_help() -> None:
    result = bastion_cli()
    assert "demo" in result.stdout + result.stderr


def test_demo_rides_out_an_outage() -> None:
    result = bastion_cli("demo", "--requests", "10")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "circuit closed -> open" in out
    assert "circuit half_open -> closed" in out
    assert "(cached)" in out
    assert "healthy" in out


def test_demo_rejects_bad_input_with_a_message() -> None:
    result = bastion_cli("demo", "--requests", "0")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "requests" in result.stderr


def test_chaos_server_command_is_registered() -> None:
    result = bastion_cli("chaos-server", "--help")
    assert result.returncode == 0
    assert "--scenario" in result.stdout


def test_chaos_server_rejects_a_missing_scenario_file_cleanly() -> None:
    result = bastion_cli("chaos-server", "--scenario", "no-such-file.json")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "no-such-file.json" in result.stderr


def test_db_upgrade_migrates_a_sqlite_file_and_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bastion.db'}"
    for _ in range(2):
        result = bastion_cli("db", "upgrade", url)
        assert result.returncode == 0, result.stderr
        assert "newest schema" in result.stdout
    assert (tmp_path / "bastion.db").exists()


def test_db_upgrade_names_a_bad_url_without_a_traceback() -> None:
    result = bastion_cli("db", "upgrade", "mysql://user:secret@db/x")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "sqlite:///" in result.stderr
    assert "secret" not in result.stdout + result.stderr
