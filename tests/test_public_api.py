"""The public API is exactly what __all__ says, and every name in it is real."""

from __future__ import annotations

import importlib

import pytest

import bastion

PUBLIC_MODULES = ["bastion", "bastion.resilience", "bastion.testing"]


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_names_exist_and_are_sorted(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = module.__all__
    assert len(names) == len(set(names))
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


def test_exported_objects_claim_a_public_home() -> None:
    """Classes and functions are defined in private modules; none leaks a private path name."""
    for name in bastion.__all__:
        obj = getattr(bastion, name)
        module = getattr(obj, "__module__", "bastion") or "bastion"
        assert module.startswith("bastion") or name == "__version__" or not callable(obj)


def test_version() -> None:
    assert isinstance(bastion.__version__, str)
    assert bastion.__version__[0].isdigit()
