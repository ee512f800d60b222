"""pyproject.toml is the single source of dependencies; the lock and environment.yml agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
_EXTRAS = {"dask": {"distributed"}}  # dask[distributed] -> conda's separate package


def _requirements(*, dev: bool = True) -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + (project["optional-dependencies"]["dev"] if dev else [])
    out = {}
    for req in reqs:
        m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)$", req)
        name, extras, spec = m.group(1).lower(), m.group(2) or "", m.group(3).strip()
        out[name] = spec
        for extra in _EXTRAS.get(name, set()):
            if extra in extras:
                out[extra] = spec
    return out


def _conda() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    out = {}
    for dep in env["dependencies"]:
        if not isinstance(dep, str):
            continue
        m = re.match(r"^([A-Za-z0-9_.-]+)\s*(.*)$", dep)
        out[m.group(1).lower()] = m.group(2).strip()
    return out


def test_environment_yml_lists_the_pyproject_packages():
    conda = _conda()
    conda.pop("python"), conda.pop("pip")
    assert conda == _requirements()


def test_locks_pin_every_dependency():
    for lock, _names in [("requirements.lock", None), ("requirements-dev.lock", None)]:
        pinned = {}
        for line in (ROOT / lock).read_text().splitlines():
            m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
            if m:
                pinned[m.group(1).lower()] = m.group(2)
        wanted = set(_requirements(dev=lock == "requirements-dev.lock"))
        missing = {n for n in wanted if n.replace("_", "-") not in pinned}
        assert not missing, f"{lock} does not pin {missing}; run `make lock`"


def test_dev_lock_agrees_with_runtime_lock():
    def pins(name):
        return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / name).read_text(), re.M))

    runtime, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    assert {k: dev.get(k) for k in runtime} == runtime
