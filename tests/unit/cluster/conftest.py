"""Fixtures of the preassign.cluster unit tests (the helpers are in cluster_support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cluster import isolate_config, make_shim_path, write_stack_config


@pytest.fixture(autouse=True)
def _isolated_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ignore the developer's own cluster defaults and AWS profile."""
    isolate_config(monkeypatch)


@pytest.fixture
def stack_config(tmp_path: Path) -> Path:
    """A defaults file as a user writes it from the stack outputs: only the fargate keys."""
    return write_stack_config(tmp_path)


@pytest.fixture
def shim_path(tmp_path: Path) -> str:
    """PATH with the image's dask-scheduler/dask-worker links, then this venv."""
    return make_shim_path(tmp_path)
