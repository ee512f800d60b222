"""Tests of preassign.cluster.client with real processes: LocalClusters, TLS, versions.

Everything runs on 127.0.0.1 without AWS: LocalClusters, and a scheduler and worker started
from the exact commands the Fargate tasks run, through the image's entry point.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import distributed
import psutil
import pytest
from distributed.core import Status
from distributed.security import Security

import preassign.cluster.client as pc
from preassign.cluster import (
    ClusterSpec,
    ClusterVersionMismatch,
    NoWorkerJoinedError,
    SchedulerUnreachableError,
    build_task_commands,
    check_versions,
    close_client,
    fargate_kwargs,
    open_client,
)
from preassign.errors import InfrastructureError

# The shared cluster test helpers live with the unit tests (tests/unit/cluster).
from tests.support.cluster import (
    ENTRYPOINT,
    MAKE_CERTS,
    VENV_BIN,
    free_port,
    isolate_config,
    make_certs,
    make_shim_path,
    stop_process,
    write_stack_config,
)


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


# ----------------------------------------------------------------------------- TLS, task commands


def test_make_certs_refuses_to_overwrite(tmp_path: Path) -> None:
    make_certs(tmp_path / "tls")
    again = subprocess.run([str(MAKE_CERTS), "--dir", str(tmp_path / "tls")],
                           capture_output=True, text=True)
    assert again.returncode == 1
    assert "pass --force" in again.stderr
    for name in ("ca", "cert", "key"):
        assert stat.S_IMODE((tmp_path / "tls" / f"{name}.pem").stat().st_mode) == 0o600


def test_exact_task_commands_start_a_tls_cluster(
    stack_config: Path, tmp_path: Path, shim_path: str
) -> None:
    # The trap: current distributed has no dask-scheduler/dask-worker executables.
    assert shutil.which("dask-scheduler", path=str(VENV_BIN)) is None
    assert shutil.which("dask-worker", path=str(VENV_BIN)) is None

    # TLS files as make-certs.sh writes them: the tasks' server identity in tls/tasks (what
    # the tasks fetch from the secret), this machine's client identity in tls.
    tls_dir = tmp_path / "tls"
    make_certs(tls_dir)
    ports = {name: free_port() for name in ("scheduler_port", "worker_port", "nanny_port")}
    spec = ClusterSpec(
        "fargate",
        config_path=stack_config,
        task_tls_dir=str(tls_dir / "tasks"),
        tls_ca_file=str(tls_dir / "ca.pem"),
        tls_cert=str(tls_dir / "cert.pem"),
        tls_key=str(tls_dir / "key.pem"),
        **ports,
    )
    commands = build_task_commands(spec, scheduler_ip="127.0.0.1")
    kwargs = fargate_kwargs(spec)
    assert commands["scheduler"][0] == "dask-scheduler"
    assert commands["worker"][:2] == ["dask-worker", f"tls://127.0.0.1:{ports['scheduler_port']}"]

    # The task environment, except the secret: the files are already in place here (the
    # entry point's fetch has its own test in tests/unit/cluster/test_cluster_fargate.py).
    env = {**os.environ, **kwargs["environment"], "PATH": shim_path}
    del env["PREASSIGN_TLS_SECRET_ARN"]
    logs = tmp_path / "logs"
    logs.mkdir()
    processes = []
    try:
        for role in ("scheduler", "worker"):
            # ENTRYPOINT + the command ECS passes as the container override.
            with open(logs / f"{role}.log", "wb") as log:
                processes.append(
                    subprocess.Popen([str(ENTRYPOINT), *commands[role]], env=env,
                                     cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
                )
        address = f"tls://127.0.0.1:{ports['scheduler_port']}"
        with distributed.Client(address, security=kwargs["security"], timeout=30) as client:
            client.wait_for_workers(1, timeout=30)
            [(worker_address, worker)] = client.scheduler_info()["workers"].items()
            assert worker_address == f"tls://127.0.0.1:{ports['worker_port']}"
            assert worker["nanny"] == f"tls://127.0.0.1:{ports['nanny_port']}"
            assert worker["id"] == 0
            assert worker["nthreads"] == 1
            assert worker["memory_limit"] == 4_000_000_000
            assert client.submit(pow, 2, 10).result() == 1024
            check_versions(client)
            dashboard_port = client.scheduler_info()["services"]["dashboard"]
        # The dashboard listens on loopback only; the scheduler port on every interface.
        listening = _listening(processes[0].pid)
        assert listening[dashboard_port] == {"127.0.0.1"}, listening
        assert listening[ports["scheduler_port"]] - {"127.0.0.1"}, listening
        # The container health check sees both processes listening.
        for process in processes:
            assert _healthcheck(process.pid, shim_path).returncode == 0
        # A certificate from another CA is refused: holding the right key is what admits.
        other = tmp_path / "other-tls"
        make_certs(other)
        for cert, key in [(other / "cert.pem", other / "key.pem"),
                          (other / "tasks" / "cert.pem", other / "tasks" / "key.pem")]:
            stranger = Security(
                tls_ca_file=str(tls_dir / "ca.pem"),
                tls_client_cert=str(cert),
                tls_client_key=str(key),
                require_encryption=True,
            )
            with pytest.raises(OSError, match="SSL"):
                distributed.Client(address, security=stranger, timeout=2)
        # The client side checks the scheduler: a client trusting another server CA refuses.
        suspicious = Security(
            tls_ca_file=str(other / "ca.pem"),
            tls_client_cert=str(tls_dir / "cert.pem"),
            tls_client_key=str(tls_dir / "key.pem"),
            require_encryption=True,
        )
        with pytest.raises(OSError):
            distributed.Client(address, security=suspicious, timeout=2)
        for process in processes:
            assert process.poll() is None, (logs / "scheduler.log").read_text()[-3000:]
    finally:
        for process in reversed(processes):
            stop_process(process)
    # Stopped: the health check fails.
    assert _healthcheck(processes[0].pid, shim_path).returncode != 0


def _listening(pid: int) -> dict[int, set[str]]:
    """Listening TCP ports of a process and its children, and the addresses they bind."""
    found: dict[int, set[str]] = {}
    process = psutil.Process(pid)
    for each in [process, *process.children(recursive=True)]:
        for conn in each.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                found.setdefault(conn.laddr.port, set()).add(conn.laddr.ip)
    return found


def _healthcheck(pid: int, path: str) -> subprocess.CompletedProcess:
    link = Path(path.split(os.pathsep)[0]) / "preassign-healthcheck"
    if not link.exists():
        link.symlink_to(ENTRYPOINT)
    return subprocess.run([str(link)], env={**os.environ, "PATH": path,
                                            "PREASSIGN_HEALTHCHECK_PID": str(pid)},
                          capture_output=True, text=True, timeout=60)


def test_personal_certificates_from_a_private_ca_are_admitted(
    stack_config: Path, tmp_path: Path, shim_path: str
) -> None:
    # ACM Private CA mode, played by a local CA: the tasks trust the CA given to
    # make-certs.sh --client-ca; a person's certificate from it connects, the interim
    # identity of another deployment does not, and no shared client identity is made.
    pytest.importorskip("cryptography")
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "people CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=1))
          .not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    person_key = ec.generate_private_key(ec.SECP256R1())
    person = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")]))
              .issuer_name(ca_name).public_key(person_key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=1))
              .not_valid_after(now + dt.timedelta(hours=12))
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (tmp_path / "people-ca.pem").write_bytes(ca.public_bytes(pem))
    tls_dir = tmp_path / "tls"
    make_certs(tls_dir, "--client-ca", str(tmp_path / "people-ca.pem"))
    assert not (tls_dir / "cert.pem").exists() and not (tls_dir / "key.pem").exists()
    (tls_dir / "cert.pem").write_bytes(person.public_bytes(pem))
    (tls_dir / "key.pem").write_bytes(person_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(tls_dir / "key.pem", 0o600)

    ports = {name: free_port() for name in ("scheduler_port", "worker_port", "nanny_port")}
    spec = ClusterSpec("fargate", config_path=stack_config, task_tls_dir=str(tls_dir / "tasks"),
                       tls_ca_file=str(tls_dir / "ca.pem"), tls_cert=str(tls_dir / "cert.pem"),
                       tls_key=str(tls_dir / "key.pem"), dashboard=False, **ports)
    commands = build_task_commands(spec, scheduler_ip="127.0.0.1")
    kwargs = fargate_kwargs(spec)
    env = {**os.environ, **kwargs["environment"], "PATH": shim_path}
    del env["PREASSIGN_TLS_SECRET_ARN"]
    processes = []
    try:
        for role in ("scheduler", "worker"):
            processes.append(subprocess.Popen([str(ENTRYPOINT), *commands[role]], env=env,
                                              cwd=tmp_path, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
        address = f"tls://127.0.0.1:{ports['scheduler_port']}"
        with distributed.Client(address, security=kwargs["security"], timeout=30) as client:
            client.wait_for_workers(1, timeout=30)
            assert client.submit(sum, [1, 2]).result() == 3
            # distributed's HTTP server (/info: logs, call stacks) runs even without the
            # dashboard: it must listen on loopback only.
            http_port = client.scheduler_info()["services"]["dashboard"]
        assert _listening(processes[0].pid)[http_port] == {"127.0.0.1"}
        # Every port a worker listens on besides its Dask ports is loopback-only.
        for port, hosts in _listening(processes[1].pid).items():
            assert port in (ports["worker_port"], ports["nanny_port"]) or hosts == {"127.0.0.1"}
        other = tmp_path / "other"
        make_certs(other)
        stranger = Security(tls_ca_file=str(tls_dir / "ca.pem"),
                            tls_client_cert=str(other / "cert.pem"),
                            tls_client_key=str(other / "key.pem"), require_encryption=True)
        with pytest.raises(OSError, match="SSL"):
            distributed.Client(address, security=stranger, timeout=2)
    finally:
        for process in reversed(processes):
            stop_process(process)


# ----------------------------------------------------------------------------- open_client


def _worker_pids(client: distributed.Client) -> list[int]:
    return list(client.run(os.getpid).values())


def test_open_client_local_closes_everything_on_exception() -> None:
    spec = ClusterSpec("local", workers=1, threads_per_worker=1, memory_limit="1GiB",
                       adapt=(1, 2))
    with pytest.raises(RuntimeError, match="boom"):
        with open_client(spec) as client:
            cluster = client.cluster
            assert isinstance(cluster, distributed.LocalCluster)
            assert cluster._adaptive is not None
            pids = _worker_pids(client)
            assert len(pids) == 1 and pids[0] != os.getpid()
            assert client.submit(sum, [1, 2]).result() == 3
            raise RuntimeError("boom")
    assert client.status == "closed"
    assert cluster.status == Status.closed
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pids[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not psutil.pid_exists(pids[0])


def test_open_client_keep_open_then_close_client() -> None:
    spec = ClusterSpec("local", workers=1, threads_per_worker=1, memory_limit="1GiB")
    with open_client(spec, keep_open=True) as client:
        pass
    try:
        assert client.status == "running"
        assert client.submit(sum, [2, 3]).result() == 5
    finally:
        cluster = client.cluster
        close_client(client)
    assert client.status == "closed"
    assert cluster.status == Status.closed


@pytest.fixture(scope="module")
def external_cluster() -> Iterator[distributed.LocalCluster]:
    """A cluster someone else runs; the tests must leave it running."""
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://",
        host="127.0.0.1", dashboard_address=None,
    ) as cluster:
        yield cluster


def test_open_client_to_a_running_scheduler_leaves_it_running(
    external_cluster: distributed.LocalCluster,
) -> None:
    address = external_cluster.scheduler_address
    assert address.startswith("tcp://127.0.0.1:")
    with open_client(ClusterSpec(address)) as client:
        assert client.cluster is None
        assert client.submit(sum, [4, 5]).result() == 9
    assert client.status == "closed"
    assert external_cluster.status == Status.running
    with distributed.Client(address) as other:
        assert other.submit(sum, [1, 1]).result() == 2


def test_open_client_to_an_unreachable_scheduler() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(OSError, match=f"could not connect to the Dask scheduler at {address}"
                       ) as info:
        with open_client(ClusterSpec(address, connect_timeout=1)):
            pass
    assert isinstance(info.value, SchedulerUnreachableError)
    assert isinstance(info.value, InfrastructureError)


def test_open_client_when_no_worker_joins(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[distributed.LocalCluster] = []

    def start_without_workers(s: dict) -> distributed.LocalCluster:
        started.append(distributed.LocalCluster(
            n_workers=0, processes=False, protocol="tcp://", host="127.0.0.1",
            dashboard_address=None))
        return started[-1]

    monkeypatch.setattr(pc, "_start_local_cluster", start_without_workers)
    spec = ClusterSpec("local", workers=1, connect_timeout=1)
    with pytest.raises(TimeoutError, match=r"no worker joined the scheduler within 1 s$") as info:
        with open_client(spec):
            pytest.fail("the block must not run")
    assert isinstance(info.value, NoWorkerJoinedError)
    assert isinstance(info.value, InfrastructureError)
    assert started[0].status == Status.closed




def _tampered_get_versions(monkeypatch: pytest.MonkeyPatch, edit) -> None:
    original = distributed.Client.get_versions

    def get_versions(self, check=False, packages=None):
        versions = original(self, check=check, packages=packages)
        edit(versions)
        return versions

    monkeypatch.setattr(distributed.Client, "get_versions", get_versions)


def test_version_mismatch_on_a_worker_is_refused(
    external_cluster: distributed.LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    def older_pandas(versions: dict) -> None:
        for info in versions["workers"].values():
            info["packages"]["pandas"] = "2.2.3"

    _tampered_get_versions(monkeypatch, older_pandas)
    with pytest.raises(ClusterVersionMismatch) as info:
        with open_client(ClusterSpec(external_cluster.scheduler_address)):
            pytest.fail("the block must not run")
    error = info.value
    assert isinstance(error, InfrastructureError)
    assert isinstance(error, RuntimeError)
    import pandas

    assert (error.package, error.client_version, error.remote_version) == (
        "pandas", pandas.__version__, "2.2.3")
    assert error.where.startswith("worker tcp://127.0.0.1:")
    assert "requirements.lock" in str(error)
    assert external_cluster.status == Status.running


def test_version_mismatch_closes_a_cluster_we_started(monkeypatch: pytest.MonkeyPatch) -> None:
    def other_dask(versions: dict) -> None:
        versions["scheduler"]["packages"]["dask"] = "2025.1.0"

    _tampered_get_versions(monkeypatch, other_dask)
    started: list[distributed.LocalCluster] = []
    original = pc._start_local_cluster
    monkeypatch.setattr(pc, "_start_local_cluster", lambda s: started.append(original(s))
                        or started[-1])
    spec = ClusterSpec("local", workers=1, threads_per_worker=1, memory_limit="1GiB")
    with pytest.raises(ClusterVersionMismatch, match=r"dask differs .* and the scheduler "
                                                     r"\(2025.1.0\)"):
        with open_client(spec):
            pytest.fail("the block must not run")
    assert started[0].status == Status.closed


def _versions(client: dict, scheduler: dict, workers: dict[str, dict]) -> dict:
    return {
        "client": {"packages": client},
        "scheduler": {"packages": scheduler},
        "workers": {addr: {"packages": p} for addr, p in workers.items()},
    }


BASE = {"python": "3.11.7.final.0", "dask": "2026.8.0", "distributed": "2026.8.0",
        "pandas": "3.1.1", "numpy": "2.4.6", "pyarrow": "26.0.1", "cloudpickle": "3.1.2",
        "msgpack": "1.2.4", "preassign": "0.1.0"}


@pytest.mark.parametrize(
    ("scheduler", "worker", "expected"),
    [
        ({}, {}, None),
        ({}, {"python": "3.11.14.final.0"}, None),
        ({"lz4": "4.0"}, {}, None),
        ({}, {"python": "3.12.1.final.0"}, ("python", "3.11", "3.12", "worker tls://w:1")),
        ({"distributed": "2026.7.0"}, {}, ("distributed", "2026.8.0", "2026.7.0",
                                           "the scheduler")),
        ({}, {"pyarrow": None}, ("pyarrow", "26.0.1", None, "worker tls://w:1")),
        ({}, {"preassign": "0.2.0"}, ("preassign", "0.1.0", "0.2.0", "worker tls://w:1")),
    ],
    ids=["same", "python-patch", "other-package", "python-minor", "distributed",
         "missing-pyarrow", "preassign"],
)
def test_compare_versions(scheduler: dict, worker: dict, expected: tuple | None) -> None:
    versions = _versions(BASE, {**BASE, **scheduler}, {"tls://w:1": {**BASE, **worker}})
    if expected is None:
        pc._compare_versions(versions)
        return
    with pytest.raises(ClusterVersionMismatch) as info:
        pc._compare_versions(versions)
    error = info.value
    assert (error.package, error.client_version, error.remote_version, error.where) == expected


def test_compare_versions_skips_preassign_from_a_source_tree() -> None:
    client = {**BASE, "preassign": None}
    pc._compare_versions(_versions(client, BASE, {"tls://w:1": BASE}))
