"""Shared fixtures: the SPEC §5 lake, and the services the integration tests start.

The test tree mirrors the package: ``unit/`` (no services, seconds; ``unit/core`` imports no
Dask), ``integration/`` (real MariaDB, moto S3, LocalClusters, papermill, Chromium),
``oracle/`` (the per-user reference, independent of the package on purpose) and
``support/`` (helpers: lake writers, services, fault proxies).
"""

from __future__ import annotations

import pytest

from tests.oracle.reference import worked_example_tables
from tests.support.lakes import write_tables
from tests.support.services import mariadb_server, mariadb_url, moto_server, s3  # noqa: F401


@pytest.fixture
def worked_lake(tmp_path):
    """The SPEC §5 example written as a plain lake directory."""
    return write_tables(worked_example_tables(), str(tmp_path / "lake"))
