"""The public API is exactly what __all__ says, and every name in it is real."""

from __future__ import annotations

import importlib
import inspect
import types
import typing

import pytest

import bastion

PUBLIC_MODULES = [
    "bastion",
    "bastion.resilience",
    "bastion.testing",
    "bastion.models",
    "bastion.agents",
    "bastion.stores",
]


def isort_style(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps ``__all__`` in: CONSTANTS, then Classes, then the rest."""
    if len(name) > 1 and name.isupper():
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_names_exist_and_are_sorted(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = list(module.__all__)
    assert len(names) == len(set(names))
    assert names == sorted(names, key=isort_style), f"{module_name}.__all__ is out of order"
    for name in names:
        assert hasattr(module, name), f"{module_name}.{name} is exported but missing"


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_nothing_public_is_left_out_of_all(module_name: str) -> None:
    module = importlib.import_module(module_name)
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, type(importlib))
    }
    assert public <= set(module.__all__), f"not in __all__: {sorted(public - set(module.__all__))}"


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_exported_objects_are_bastions_own_and_importable_from_home(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in module.__all__:
        obj = getattr(module, name)
        assert not isinstance(obj, types.ModuleType), f"{module_name}.{name} is a module"
        if not (isinstance(obj, type | typing.NewType) or inspect.isfunction(obj)):
            continue  # constants such as SYSTEM_CLOCK and __version__
        home = obj.__module__
        assert home.startswith("bastion."), f"{module_name}.{name} comes from {home}"
        assert getattr(importlib.import_module(home), obj.__name__) is obj, (
            f"{module_name}.{name} is not {home}.{obj.__name__}"
        )


def test_version() -> None:
    assert isinstance(bastion.__version__, str)
    assert bastion.__version__[0].isdigit()


@pytest.mark.parametrize("module_name", ["bastion", "bastion.resilience"])
def test_store_health_is_public(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in ("DegradedStore", "StoreCheck", "StoreHealth", "check_stores"):
        assert name in module.__all__, f"{module_name}.{name} is not exported"
