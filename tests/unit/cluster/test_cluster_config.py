"""Tests of preassign.cluster.config: defaults file, parse_adapt, ClusterSpec, checks.

Pure: neither this module nor preassign.cluster.config imports distributed,
dask-cloudprovider or boto (the first test holds the package to that).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import preassign.cluster.config as pc
from preassign.cluster.config import (
    BUILTIN_DEFAULTS,
    ClusterSpec,
    MissingFileError,
    check_memory_limit,
    check_tls_files,
    load_defaults,
    parse_adapt,
)
from preassign.errors import UsageError
from tests.support.cluster import DEFAULTS_YAML, PACKAGED_YAML, REPO

BLOCKED = ("distributed", "dask_cloudprovider", "boto3", "botocore", "aiobotocore")


# ----------------------------------------------------------------------------- imports


def test_config_imports_no_aws_and_no_distributed() -> None:
    code = f"""
import importlib.abc, sys

BLOCKED = {BLOCKED!r}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked")
        return None

for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]
sys.meta_path.insert(0, Block())

import preassign.cluster.config as config
from preassign.cluster import BUILTIN_DEFAULTS, ClusterSpec, load_defaults, parse_adapt

spec = ClusterSpec("fargate", workers=2, adapt=parse_adapt("1:3"))
settings = config.resolve_settings(spec)
assert settings["workers"] == 2 and settings["adapt"] == (1, 3), settings
assert load_defaults()["fargate"]["worker_cpu"] == BUILTIN_DEFAULTS["fargate"]["worker_cpu"]
try:
    import distributed
except ImportError:
    pass
else:
    raise AssertionError("the blocker let distributed in")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != pc.CONFIG_ENV_VAR}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# ----------------------------------------------------------------------------- defaults


def test_repository_defaults_file_links_to_the_packaged_one() -> None:
    assert DEFAULTS_YAML.is_symlink()
    assert os.readlink(DEFAULTS_YAML) == "../preassign/cluster/defaults.yaml"
    assert DEFAULTS_YAML.resolve() == PACKAGED_YAML.resolve()


def test_defaults_yaml_is_package_data() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "cluster/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["preassign"]
    assert pc.packaged_defaults_path() == PACKAGED_YAML


def test_defaults_yaml_equals_builtin_defaults() -> None:
    assert yaml.safe_load(DEFAULTS_YAML.read_text()) == pc._thaw(BUILTIN_DEFAULTS)
    assert yaml.safe_load(PACKAGED_YAML.read_text()) == pc._thaw(BUILTIN_DEFAULTS)


def test_builtin_defaults_are_read_only() -> None:
    with pytest.raises(TypeError):
        BUILTIN_DEFAULTS["fargate"]["workers"] = 1  # type: ignore[index]
    assert isinstance(BUILTIN_DEFAULTS["fargate"]["subnets"], tuple)
    loaded = load_defaults()
    loaded["fargate"]["subnets"].append("subnet-1")
    assert load_defaults()["fargate"]["subnets"] == []


def test_defaults_yaml_has_a_comment_on_every_key() -> None:
    key_lines = [
        line
        for line in DEFAULTS_YAML.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert key_lines and all("#" in line for line in key_lines), [
        line for line in key_lines if "#" not in line
    ]


def test_load_defaults_reads_the_packaged_file() -> None:
    assert pc.default_config_path() == PACKAGED_YAML
    assert load_defaults() == pc._thaw(BUILTIN_DEFAULTS)
    assert load_defaults(DEFAULTS_YAML) == pc._thaw(BUILTIN_DEFAULTS)


def test_env_var_file_is_laid_over_builtin_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("kind: fargate\nfargate:\n  workers: 9\n")
    monkeypatch.setenv(pc.CONFIG_ENV_VAR, str(path))
    assert pc.default_config_path() == path
    defaults = load_defaults()
    assert defaults["kind"] == "fargate"
    assert defaults["fargate"]["workers"] == 9
    assert defaults["fargate"]["worker_cpu"] == BUILTIN_DEFAULTS["fargate"]["worker_cpu"]
    assert defaults["local"] == pc._thaw(BUILTIN_DEFAULTS["local"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour: red\n", r"unknown key 'colour' .* valid keys: connect_timeout, fargate"),
        ("fargate:\n  worker_cpus: 1\n", r"unknown key\(s\) 'worker_cpus' under 'fargate'"),
        ("fargate: 3\n", r"'fargate' .* must be a mapping"),
        ("- 1\n", r"must hold a YAML mapping"),
        ("fargate: [\n", r"is not valid YAML"),
    ],
    ids=["unknown-top", "unknown-nested", "section-not-mapping", "not-mapping", "not-yaml"],
)
def test_bad_defaults_file_is_rejected(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        load_defaults(path)
    assert isinstance(info.value, UsageError)


def test_named_defaults_file_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pc.CONFIG_ENV_VAR, str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match="missing.yaml does not exist") as info:
        load_defaults()
    assert isinstance(info.value, MissingFileError)
    assert isinstance(info.value, UsageError)


def test_bad_value_in_defaults_file_names_the_file_when_resolved(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("fargate:\n  worker_cpu: 1000\n")
    with pytest.raises(UsageError, match=r"worker_cpu must be a Fargate CPU size.*bad.yaml"):
        pc.resolve_settings(ClusterSpec("fargate", config_path=path))


# ----------------------------------------------------------------------------- parse_adapt


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2:10", (2, 10)), ("0:1", (0, 1)), (" 3 : 3 ", (3, 3))],
)
def test_parse_adapt(text: str, expected: tuple[int, int]) -> None:
    assert parse_adapt(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"MIN:MAX, two whole numbers of workers such as 2:10; got ''"),
        ("5", r"MIN:MAX.*got '5'"),
        ("2-10", r"MIN:MAX.*got '2-10'"),
        ("2:10:3", r"MIN:MAX.*got '2:10:3'"),
        (":4", r"MIN:MAX.*got ':4'"),
        ("a:b", r"whole numbers of workers such as 2:10; got 'a:b'"),
        ("1.5:3", r"whole numbers.*got '1.5:3'"),
        ("10:2", r"minimum <= maximum.*minimum 10, maximum 2"),
        ("-1:2", r"0 <= minimum.*minimum -1"),
        ("0:0", r"maximum >= 1.*maximum 0"),
    ],
)
def test_parse_adapt_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_adapt(text)
    assert isinstance(info.value, UsageError)


def test_parse_adapt_needs_a_string() -> None:
    with pytest.raises(TypeError, match="expects a str like '2:10', got tuple"):
        parse_adapt((2, 10))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- ClusterSpec


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "kubernetes"}, r"'local', 'fargate' or a scheduler address.*'kubernetes'"),
        ({"kind": "tcp://nohost"}, r"tcp://host:port or tls://host:port"),
        ({"workers": -1}, r"workers must be a whole number >= 0; got -1"),
        ({"workers": True}, r"workers must be a whole number"),
        ({"threads_per_worker": 0}, r"threads_per_worker must be a whole number >= 1"),
        ({"memory_limit": "lots"}, r'memory_limit must be "auto" or a positive Dask size'),
        ({"adapt": (5, 2)}, r"minimum <= maximum"),
        ({"adapt": "2:5"}, r"two whole numbers"),
        ({"worker_cpu": 1000}, r"worker_cpu must be a Fargate CPU size, one of \[256, 512"),
        ({"idle_timeout": "soon"}, r"idle_timeout must be a positive Dask duration"),
        ({"subnets": ["sg-1"]}, r"subnets must be a list of ids starting with 'subnet-'"),
        ({"kind": "local", "worker_cpu": 1024}, r"worker_cpu cannot be set for a local"),
        ({"kind": "fargate", "memory_limit": "4GiB"}, r"memory_limit -> local"),
        ({"kind": "tcp://h:8786", "workers": 2}, r"workers cannot be set for a scheduler"),
        ({"kind": "tcp://h:8786", "tls_cert": "c"}, r"tls_cert -> fargate, tls:// addresses"),
    ],
)
def test_cluster_spec_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        ClusterSpec(**kwargs)
    assert isinstance(info.value, UsageError)


def test_cluster_spec_normalises_sequences() -> None:
    spec = ClusterSpec("fargate", adapt=[1, 3], subnets=["subnet-1"], security_groups="sg-1")
    assert spec.adapt == (1, 3)
    assert spec.subnets == ("subnet-1",)
    assert spec.security_groups == ("sg-1",)
    hash(spec)


# ----------------------------------------------------------------------------- TLS files


def test_missing_tls_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("ca")
    settings = {"tls_ca_file": str(tmp_path / "ca.pem"), "tls_cert": str(tmp_path / "c.pem"),
                "tls_key": "~/no-such-dir-preassign/key.pem"}
    with pytest.raises(FileNotFoundError, match=r"TLS file\(s\) not found: tls_cert .*c.pem; "
                                                r"tls_key .*/no-such-dir-preassign/key.pem\. "
                                                r"Create them with cluster/tls/make-certs.sh"
                       ) as info:
        check_tls_files(settings)
    assert isinstance(info.value, MissingFileError)
    assert isinstance(info.value, UsageError)
    assert "~" not in str(info.value)


# ----------------------------------------------------------------------------- --memory-limit


def test_check_memory_limit() -> None:
    assert check_memory_limit("768MiB") == 768 * 2**20
    assert check_memory_limit("4GiB") == 4 * 2**30


@pytest.mark.parametrize(
    ("memory", "message"),
    [
        ("250MiB", r"250MiB is too small: .* give at least 768MiB"),
        ("lots", r"expected a size such as 4GiB, got 'lots'"),
        ("auto", r"expected a size such as 4GiB, got 'auto'"),
    ],
)
def test_check_memory_limit_errors(memory: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        check_memory_limit(memory)


# ----------------------------------------------------------------------------- scheduler address


@pytest.mark.parametrize(
    "address",
    ["tcp://127.0.0.1:8786", "tcp://127.9.9.9:8786", "tcp://localhost:8786",
     "tcp://[::1]:8786", "tls://10.0.1.23:8786", "tls://scheduler.internal:8786"],
)
def test_secure_or_local_scheduler_addresses_are_accepted(address: str) -> None:
    from preassign.cluster import check_scheduler_address

    check_scheduler_address(address)
    pc.resolve_settings(ClusterSpec(address))


@pytest.mark.parametrize(
    "address",
    ["tcp://10.0.1.23:8786", "tcp://scheduler.internal:8786", "tcp://0.0.0.0:8786",
     "tcp://[2001:db8::1]:8786", "tcp://localhost.evil.example:8786"],
)
def test_plain_tcp_scheduler_elsewhere_is_refused(address: str) -> None:
    from preassign.cluster import INSECURE_SCHEDULER_FLAG, check_scheduler_address

    with pytest.raises(UsageError) as info:
        check_scheduler_address(address)
    message = str(info.value)
    assert f"the scheduler {address} is not on this machine" in message
    assert "tls://host:port" in message and INSECURE_SCHEDULER_FLAG in message
    assert INSECURE_SCHEDULER_FLAG == "--insecure-scheduler"
    # The same refusal before anything connects, and the explicit opt-out.
    with pytest.raises(UsageError, match="not on this machine"):
        pc.resolve_settings(ClusterSpec(address))
    check_scheduler_address(address, insecure=True)
    settings = pc.resolve_settings(ClusterSpec(address, insecure_scheduler=True))
    assert settings["insecure_scheduler"] is True


def test_insecure_scheduler_from_the_defaults_file(tmp_path: Path) -> None:
    path = tmp_path / "trusting.yaml"
    path.write_text("insecure_scheduler: true\n")
    pc.resolve_settings(ClusterSpec("tcp://10.0.1.23:8786", config_path=path))
    path.write_text("insecure_scheduler: 'yes'\n")
    with pytest.raises(UsageError, match="insecure_scheduler must be true or false"):
        pc.resolve_settings(ClusterSpec("tcp://10.0.1.23:8786", config_path=path))


@pytest.mark.parametrize("kind", ["local", "fargate", "tls://10.0.0.1:8786"])
def test_insecure_scheduler_applies_to_tcp_addresses_only(kind: str) -> None:
    with pytest.raises(UsageError, match=r"insecure_scheduler -> tcp:// addresses"):
        ClusterSpec(kind, insecure_scheduler=True)
