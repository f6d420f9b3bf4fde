"""The ``bastion`` command line."""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["app", "main"]

app = typer.Typer(
    name="bastion",
    help="Make LLM agents survive production.",
    no_args_is_help=True,
    add_completion=False,
)


def _version() -> str:
    try:
        return package_version("bastion")
    except PackageNotFoundError:  # pragma: no cover - only when run from a bare source tree
        return "unknown"


@app.command()
def version() -> None:
    """Print Bastion's version."""
    typer.echo(_version())


@app.command()
def demo(
    requests: int = typer.Option(20, min=1, max=1000, help="Requests in the flaky phase."),
) -> None:
    """Wrap a flaky in-process agent with the full resilience stack and show what happens."""
    from bastion._demo import run_demo

    asyncio.run(run_demo(Console(), requests=requests))


@app.command("chaos-server")
def chaos_server(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8900, min=0, max=65535, help="Port; 0 picks a free one."),
    scenario: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            readable=True,
            help="JSON or TOML file of scenario steps (see docs/chaos-server.md).",
        ),
    ] = None,
) -> None:
    """Serve OpenAI- and Anthropic-style endpoints that fail on cue, for testing agents."""
    from bastion._chaos_cli import chaos_server_command

    chaos_server_command(host=host, port=port, scenario_file=scenario)


db_app = typer.Typer(help="Manage the SQL store's schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(
    url: Annotated[
        str,
        typer.Argument(
            envvar="BASTION_STORE_URL",
            help="Database URL, e.g. sqlite:///bastion.db or postgresql://user@host/db.",
        ),
    ] = "sqlite:///bastion.db",
    schema: Annotated[
        str | None, typer.Option(help="PostgreSQL schema to use (default: the search path).")
    ] = None,
) -> None:
    """Apply every schema migration the database lacks (idempotent, safe to run twice)."""
    from bastion._core.errors import BastionError
    from bastion._core.redact import redact_url
    from bastion.stores import upgrade

    try:
        asyncio.run(upgrade(url, schema=schema))
    except BastionError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(code=1) from None
    typer.echo(f"{redact_url(url)} is at the newest schema")


def main() -> None:
    """Entry point of the ``bastion`` console script."""
    app()
