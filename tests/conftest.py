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


#: Services a test may find missing outside CI, and how to install them (the skip reasons of
#: tests/support/services.py and the Chromium tests start with the service's name).
MISSING_SERVICES = {
    "MariaDB": "apt-get install mariadb-server   (the tests start their own mariadbd)",
    "Chromium": "apt-get install chromium        (headless, for the report's screenshot test)",
    "moto[server]": "make install                    (moto[server] is in requirements-dev.lock)",
}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say which tests were skipped because a service is missing, and how to install it.

    Outside CI a missing MariaDB or Chromium skips the tests that need it (in CI, with
    ``CI`` set, it fails them instead); a line at the end of the run says so plainly.
    """
    counts: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        for service in MISSING_SERVICES:
            if reason.removeprefix("Skipped: ").startswith(f"{service} is not installed"):
                counts[service] = counts.get(service, 0) + 1
    if not counts:
        return
    terminalreporter.section("skipped: services not installed", yellow=True, bold=True)
    for service, n in counts.items():
        terminalreporter.write_line(
            f"{n} test(s) skipped: {service} is not installed. Install it with: "
            f"{MISSING_SERVICES[service]}")
    terminalreporter.write_line("CI=1 makes a missing service an error instead of a skip.")
