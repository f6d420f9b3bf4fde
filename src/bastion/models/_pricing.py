"""What a model call costs, from a price table kept as data.

Prices change more often than code ships, so the defaults live in
``pricing.toml`` beside this module (with their sources and date) and every
entry can be overridden from configuration. Money is :class:`~decimal.Decimal`
end to end: a budget compared against a sum of floats drifts, a sum of
decimals does not.

Model names arrive in many spellings -- ``gpt-4o-2024-08-06``,
``openai/gpt-4o``, ``us.anthropic.claude-3-5-sonnet-20241022-v2:0`` -- so a
lookup lower-cases the name, drops a routing prefix, and then strips dated or
versioned snapshot suffixes one at a time until an entry matches. It never
strips anything else: ``o1-pro`` costs ten times ``o1``, and a budget that
priced one as the other would be worse than one that refuses to guess. An
unknown name raises :class:`UnknownModelError` naming the closest entries.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from bastion._core.errors import BastionError, ConfigurationError
from bastion._core.usage import Usage

__all__ = [
    "ModelPrice",
    "PricingTable",
    "UnknownModelError",
    "match_model",
    "normalize_model_name",
]

_MILLION = Decimal(1_000_000)
_DEFAULT_FILE = Path(__file__).with_name("pricing.toml")

# A host's routing prefix: Bedrock's "anthropic." (optionally region-scoped: "us.anthropic."),
# after any "provider/" path has been cut off.
_VENDOR_PREFIX = re.compile(
    r"^(?:(?:us|eu|apac|global)\.)?"
    r"(?:anthropic|meta|mistral|amazon|cohere|ai21|deepseek|openai|google)\."
)
# One snapshot suffix at the end of a name: a date (2024-08-06, 20241022, 05-06), a short
# revision (0613, 002), latest / preview / exp, or a Bedrock/Vertex version (-v2:0, @20240620).
_SNAPSHOT_SUFFIX = re.compile(
    r"(?:[-@](?:\d{4}-\d{2}-\d{2}|\d{8}|\d{3,4}|\d{2}-\d{2}|latest|preview|exp|v\d+(?::\d+)?)"
    r"|:\d+)$"
)
_RESOLVED_CACHE_LIMIT = 4096


class UnknownModelError(BastionError, LookupError):
    """A model name matched no entry of a table; ``close_matches`` lists the nearest ones."""

    http_status = 500

    def __init__(self, model: str, *, what: str, close_matches: tuple[str, ...], fix: str) -> None:
        self.model = model
        self.close_matches = close_matches
        near = f"; close matches: {', '.join(close_matches)}" if close_matches else ""
        super().__init__(f"no {what} known for model {model!r}{near}. {fix}")


def normalize_model_name(model: str) -> str:
    """The name as the tables spell it: lower case, without a ``provider/`` or Bedrock prefix."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    return _VENDOR_PREFIX.sub("", name, count=1)


def match_model(model: str, known: Container[str]) -> str | None:
    """The name in ``known`` that ``model`` names, or None.

    ``known`` names must already be normalised. Exact match first; then one
    snapshot suffix at a time is stripped and the match retried.
    """
    name = normalize_model_name(model)
    while name:
        if name in known:
            return name
        stripped = _SNAPSHOT_SUFFIX.sub("", name, count=1)
        if stripped == name:
            return None
        name = stripped
    return None


def close_matches(model: str, names: Iterable[str]) -> tuple[str, ...]:
    """Up to three known names that look like ``model``, for error messages.

    Known names that begin ``model`` come first, longest first (``o1-pro-x``
    suggests ``o1-pro`` before ``o1``); then names that merely look alike.
    """
    name = normalize_model_name(model)
    known = list(names)
    prefixes = sorted((n for n in known if name.startswith(n)), key=len, reverse=True)
    alike = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return tuple(dict.fromkeys([*prefixes, *alike]))[:3]


def _price(value: object, option: str) -> Decimal:
    """A price per million tokens as an exact, finite Decimal >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        return _bad_price(option, value)
    try:
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        return _bad_price(option, value)
    if not number.is_finite() or number < 0:
        return _bad_price(option, value)
    return number


def _bad_price(option: str, value: object) -> Decimal:
    raise ConfigurationError(
        f"{option} must be a price in USD per million tokens >= 0 (a number or a numeric "
        f"string such as '2.50'); got {value!r}"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelPrice:
    """One model's prices in USD per million tokens.

    ``cached_input`` is the price of prompt tokens read from the provider's
    prompt cache; None when the provider publishes none, and then those
    tokens cost ``input``.
    """

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    provider: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "input", _price(self.input, "ModelPrice.input"))
        object.__setattr__(self, "output", _price(self.output, "ModelPrice.output"))
        if self.cached_input is not None:
            cached = _price(self.cached_input, "ModelPrice.cached_input")
            object.__setattr__(self, "cached_input", cached)

    def cost(self, usage: Usage) -> Decimal:
        """USD for ``usage``: cached prompt tokens at the cached rate, others at the input rate."""
        cached_rate = self.input if self.cached_input is None else self.cached_input
        fresh = usage.input_tokens - usage.cached_tokens
        total = fresh * self.input + usage.cached_tokens * cached_rate
        return (total + usage.output_tokens * self.output) / _MILLION


_PRICE_FIELDS = ("input", "output", "cached_input", "provider")
_ENTRY_FIELDS = frozenset({*_PRICE_FIELDS, "aliases"})


def _entry(name: str, raw: object, base: ModelPrice | None) -> tuple[ModelPrice, tuple[str, ...]]:
    """Parse one table entry (a ModelPrice or a mapping), merged over ``base`` when given."""
    where = f"pricing[{name!r}]"
    if isinstance(raw, ModelPrice):
        return raw, ()
    if not isinstance(raw, Mapping):
        raise ConfigurationError(
            f"{where} must be a mapping such as {{'input': '2.50', 'output': '10'}} or a "
            f"ModelPrice; got {raw!r}"
        )
    unknown = sorted(str(key) for key in raw if key not in _ENTRY_FIELDS)
    if unknown:
        raise ConfigurationError(
            f"{where} has unknown field(s) {', '.join(unknown)}; the fields are "
            f"{', '.join(sorted(_ENTRY_FIELDS))}"
        )
    aliases = raw.get("aliases", ())
    if isinstance(aliases, str) or not all(isinstance(alias, str) for alias in aliases):
        raise ConfigurationError(f"{where}.aliases must be a list of model names; got {aliases!r}")
    provider = raw.get("provider")
    if provider is not None and not isinstance(provider, str):
        raise ConfigurationError(f"{where}.provider must be a name or None; got {provider!r}")
    values = {
        key: raw[key] for key in ("input", "output", "cached_input", "provider") if key in raw
    }
    if base is None:
        missing = [key for key in ("input", "output") if key not in values]
        if missing:
            raise ConfigurationError(
                f"{where} is a new model and needs {' and '.join(missing)}: "
                "give both 'input' and 'output' prices (USD per million tokens)"
            )
        base = ModelPrice(input=Decimal(0), output=Decimal(0))
    try:
        price = replace(base, **values)
    except ConfigurationError as exc:
        raise ConfigurationError(str(exc).replace("ModelPrice", where, 1)) from None
    return price, tuple(normalize_model_name(alias) for alias in aliases)


class PricingTable:
    """Model name -> :class:`ModelPrice`, with alias and snapshot matching. Immutable.

    Build it with :meth:`default`, :meth:`from_dict` or :meth:`from_file`, and
    derive variants with :meth:`with_overrides`.
    """

    __slots__ = ("_aliases", "_meta", "_names", "_prices", "_resolved")

    def __init__(
        self,
        prices: Mapping[str, ModelPrice],
        *,
        aliases: Mapping[str, str] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self._prices: Mapping[str, ModelPrice] = MappingProxyType(
            {normalize_model_name(name): price for name, price in prices.items()}
        )
        table_aliases = {
            normalize_model_name(alias): normalize_model_name(target)
            for alias, target in (aliases or {}).items()
        }
        for alias, target in table_aliases.items():
            if target not in self._prices:
                raise ConfigurationError(
                    f"pricing alias {alias!r} points at {target!r}, which has no price"
                )
        self._aliases: Mapping[str, str] = MappingProxyType(table_aliases)
        self._names = frozenset(self._prices) | frozenset(self._aliases)
        self._meta: Mapping[str, Any] = MappingProxyType(dict(meta or {}))
        self._resolved: dict[str, str] = {}

    @classmethod
    def default(cls) -> PricingTable:
        """The table shipped with Bastion: ``pricing.toml``, whose header gives sources and date."""
        return _default_table()

    @classmethod
    def from_dict(
        cls, models: Mapping[str, Any], *, meta: Mapping[str, Any] | None = None
    ) -> PricingTable:
        """A table from ``{name: {"input": ..., "output": ..., "cached_input": ...}}``.

        An entry may also name its ``provider`` and list ``aliases``.
        """
        return cls({}, meta=meta).with_overrides(models)

    @classmethod
    def from_file(cls, path: str | Path) -> PricingTable:
        """A table from a TOML or JSON file shaped like ``pricing.toml`` (a ``models`` table)."""
        file = Path(path)
        text = file.read_text(encoding="utf-8")
        try:
            if file.suffix.lower() == ".json":
                data = json.loads(text, parse_float=Decimal)
            else:
                data = tomllib.loads(text, parse_float=Decimal)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"pricing file {str(file)!r} cannot be parsed: {exc}") from exc
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, dict):
            raise ConfigurationError(
                f"pricing file {str(file)!r} must hold a 'models' table of "
                "model name -> {input, output, cached_input}"
            )
        meta = data.get("meta")
        return cls.from_dict(models, meta=meta if isinstance(meta, dict) else None)

    def with_overrides(self, overrides: Mapping[str, Any]) -> PricingTable:
        """A new table with ``overrides`` applied.

        An entry for a model already in the table (by name or alias) replaces
        only the fields it gives; an entry for a new model needs ``input`` and
        ``output``.
        """
        prices = dict(self._prices)
        aliases = dict(self._aliases)
        for name, raw in overrides.items():
            key = normalize_model_name(name)
            key = aliases.get(key, key)
            price, new_aliases = _entry(name, raw, prices.get(key))
            prices[key] = price
            for alias in new_aliases:
                aliases[alias] = key
        return PricingTable(prices, aliases=aliases, meta=self._meta)

    @property
    def meta(self) -> Mapping[str, Any]:
        """The table's ``[meta]`` section: unit, date and sources."""
        return self._meta

    def models(self) -> tuple[str, ...]:
        """Every priced model name, sorted."""
        return tuple(sorted(self._prices))

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self._resolve(model) is not None

    def __len__(self) -> int:
        return len(self._prices)

    def resolve(self, model: str) -> str:
        """The table's name for ``model`` (``"gpt-4o-2024-08-06"`` -> ``"gpt-4o"``)."""
        key = self._resolve(model)
        if key is None:
            raise UnknownModelError(
                model,
                what="price",
                close_matches=close_matches(model, self._names),
                fix="Add it with PricingTable.with_overrides({name: {'input': ..., "
                "'output': ...}}) (USD per million tokens).",
            )
        return key

    def price(self, model: str) -> ModelPrice:
        """The prices for ``model``; :class:`UnknownModelError` when it has none."""
        return self._prices[self.resolve(model)]

    def cost(self, model: str, usage: Usage) -> Decimal:
        """USD for ``usage`` on ``model``."""
        return self.price(model).cost(usage)

    def _resolve(self, model: str) -> str | None:
        key = self._resolved.get(model)
        if key is not None:
            return key
        found = match_model(model, self._names)
        if found is None:
            return None
        key = self._aliases.get(found, found)
        if len(self._resolved) >= _RESOLVED_CACHE_LIMIT:
            self._resolved.clear()
        self._resolved[model] = key
        return key

    def __repr__(self) -> str:
        return f"PricingTable({len(self._prices)} models)"


@cache
def _default_table() -> PricingTable:
    return PricingTable.from_file(_DEFAULT_FILE)
