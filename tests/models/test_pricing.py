"""Prices as data: lookup by name, alias and snapshot, exact Decimal costs, clear errors."""

from __future__ import annotations

import json
import tomllib
from decimal import Decimal
from pathlib import Path

import pytest

from bastion import ConfigurationError
from bastion._core.usage import Usage
from bastion.models import ModelPrice, PricingTable, UnknownModelError
from bastion.models._pricing import match_model, normalize_model_name

TABLE_FILE = Path(__file__).resolve().parents[2] / "src" / "bastion" / "models" / "pricing.toml"


@pytest.fixture
def table() -> PricingTable:
    return PricingTable.default()


def test_the_shipped_file_states_its_unit_date_and_sources(table: PricingTable) -> None:
    assert table.meta["unit"] == "USD per 1,000,000 tokens"
    assert table.meta["as_of"]
    sources = " ".join(table.meta["sources"])
    for provider in ("openai", "anthropic", "google", "mistral"):
        assert provider in sources


def test_every_provider_family_is_priced(table: PricingTable) -> None:
    providers = {table.price(model).provider for model in table.models()}
    assert {"openai", "anthropic", "google", "mistral", "deepseek", "groq"} <= providers
    for model in ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-flash"):
        assert model in table


def test_every_entry_is_sane(table: PricingTable) -> None:
    for model in table.models():
        price = table.price(model)
        assert price.output >= 0
        assert price.input >= 0
        if price.cached_input is not None:
            assert price.cached_input <= price.input, model


@pytest.mark.parametrize(
    ("name", "entry"),
    [
        ("gpt-4o", "gpt-4o"),
        ("GPT-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
        ("openai/gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4-0613", "gpt-4"),
        ("gpt-4-1106-preview", "gpt-4-turbo"),
        ("gpt-4-turbo-2024-04-09", "gpt-4-turbo"),
        ("o1-preview", "o1"),
        ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
        ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-0", "claude-sonnet-4"),
        ("us.anthropic.claude-3-5-sonnet-20241022-v2:0", "claude-3-5-sonnet"),
        ("claude-3-5-sonnet@20240620", "claude-3-5-sonnet"),
        ("models/gemini-1.5-pro-002", "gemini-1.5-pro"),
        ("gemini-2.5-flash-preview-05-20", "gemini-2.5-flash"),
        ("gemini-2.5-flash-lite", "gemini-2.5-flash-lite"),
        ("mistral-large-2411", "mistral-large"),
        ("mistral-large-latest", "mistral-large"),
    ],
)
def test_names_resolve_by_alias_and_snapshot(table: PricingTable, name: str, entry: str) -> None:
    assert table.resolve(name) == entry


@pytest.mark.parametrize("name", ["o1-pro-2025-03-19x", "gpt-4o-realtime", "llama-99", ""])
def test_a_different_model_is_never_guessed(table: PricingTable, name: str) -> None:
    assert name not in table
    with pytest.raises(UnknownModelError):
        table.price(name)


def test_unknown_models_name_close_matches(table: PricingTable) -> None:
    with pytest.raises(UnknownModelError) as caught:
        table.price("o1-pro-2025-03-19x")
    assert caught.value.close_matches[:2] == ("o1-pro", "o1")
    assert "o1-pro" in str(caught.value)
    assert "with_overrides" in str(caught.value)
    assert isinstance(caught.value, LookupError)


def test_cost_prices_cached_tokens_at_the_cached_rate(table: PricingTable) -> None:
    usage = Usage(input_tokens=1_000, cached_tokens=400, output_tokens=500)
    # 600 fresh * 2.50 + 400 cached * 1.25 + 500 out * 10.00, per million
    assert table.cost("gpt-4o-2024-08-06", usage) == Decimal("0.007")


def test_cached_tokens_cost_the_input_rate_without_a_cached_price() -> None:
    price = ModelPrice(input=Decimal(4), output=Decimal(8))
    usage = Usage(input_tokens=1_000_000, cached_tokens=500_000, output_tokens=0)
    assert price.cost(usage) == Decimal(4)


def test_costs_are_exact_decimals() -> None:
    price = ModelPrice(input=Decimal("0.1"), output=Decimal("0.2"))
    total = sum((price.cost(Usage(input_tokens=1, output_tokens=1)) for _ in range(10)), Decimal(0))
    assert total == Decimal("0.000003")


def test_overrides_replace_only_the_fields_they_name(table: PricingTable) -> None:
    custom = table.with_overrides({"gpt-4o": {"input": "2.00"}})
    assert custom.price("gpt-4o").input == Decimal("2.00")
    assert custom.price("gpt-4o").output == table.price("gpt-4o").output
    assert custom.price("gpt-4o").cached_input == table.price("gpt-4o").cached_input
    assert table.price("gpt-4o").input == Decimal("2.50")  # the original is untouched


def test_overrides_follow_aliases(table: PricingTable) -> None:
    custom = table.with_overrides({"claude-sonnet-4-0": {"output": 12}})
    assert custom.price("claude-sonnet-4").output == Decimal(12)


def test_new_models_need_input_and_output(table: PricingTable) -> None:
    custom = table.with_overrides(
        {"acme-large": {"input": 1, "output": "3.5", "aliases": ["acme-l"], "provider": "acme"}}
    )
    assert custom.price("acme-l-2025-01-01").output == Decimal("3.5")
    assert custom.price("acme-large").provider == "acme"
    with pytest.raises(ConfigurationError, match="needs output"):
        table.with_overrides({"acme-small": {"input": 1}})


def test_a_model_price_object_is_accepted(table: PricingTable) -> None:
    custom = table.with_overrides({"local": ModelPrice(input=Decimal(0), output=Decimal(0))})
    assert custom.cost("local", Usage(input_tokens=10, output_tokens=10)) == 0


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"input": -1, "output": 1}, r"pricing\['m'\]\.input must be a price"),
        ({"input": "abc", "output": 1}, "input must be a price"),
        ({"input": 1, "output": float("nan")}, "output must be a price"),
        ({"input": 1, "output": True}, "output must be a price"),
        ({"input": 1, "ouput": 1}, "unknown field"),
        ({"input": 1, "output": 1, "aliases": "m2"}, "aliases must be a list"),
        ({"input": 1, "output": 1, "provider": 3}, "provider must be a name"),
        ("cheap", "must be a mapping"),
    ],
)
def test_bad_entries_are_configuration_errors(entry: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PricingTable.from_dict({"m": entry})


def test_an_alias_must_point_at_a_priced_model() -> None:
    with pytest.raises(ConfigurationError, match="has no price"):
        PricingTable({}, aliases={"a": "b"})


def test_from_file_reads_toml_and_json(tmp_path: Path) -> None:
    toml_file = tmp_path / "prices.toml"
    toml_file.write_text('[models."house"]\ninput = 0.3\noutput = 0.9\n')
    json_file = tmp_path / "prices.json"
    json_file.write_text(json.dumps({"models": {"house": {"input": 0.3, "output": 0.9}}}))
    for path in (toml_file, json_file):
        price = PricingTable.from_file(path).price("house")
        assert (price.input, price.output) == (Decimal("0.3"), Decimal("0.9"))


def test_from_file_rejects_files_without_models(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("models = [")
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    with pytest.raises(ConfigurationError, match="cannot be parsed"):
        PricingTable.from_file(broken)
    with pytest.raises(ConfigurationError, match="'models' table"):
        PricingTable.from_file(empty)


def test_the_shipped_file_round_trips(table: PricingTable) -> None:
    raw = tomllib.loads(TABLE_FILE.read_text())
    assert len(table) == len(raw["models"])
    assert PricingTable.from_file(TABLE_FILE).models() == table.models()


def test_name_normalisation() -> None:
    assert normalize_model_name("  OpenAI/GPT-4o ") == "gpt-4o"
    assert normalize_model_name("eu.anthropic.claude-3-haiku-20240307-v1:0") == (
        "claude-3-haiku-20240307-v1:0"
    )
    assert match_model("claude-3-haiku-20240307-v1:0", {"claude-3-haiku"}) == "claude-3-haiku"
    assert match_model("gpt-4o-mini", {"gpt-4o"}) is None


def test_the_default_table_is_shared_and_immutable(table: PricingTable) -> None:
    assert PricingTable.default() is table
    assert repr(table).startswith("PricingTable(")
    assert 3 not in table
