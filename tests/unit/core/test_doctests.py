"""The examples in the core's docstrings run as written."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["catalog", "contract", "demand", "dense", "engine", "params", "partition", "rules",
           "sparse", "stock", "rounds"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"preassign.core.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
