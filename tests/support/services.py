"""Real services for the integration tests: a MariaDB server and a moto S3 endpoint.

Fixtures (import them into ``tests/conftest.py``, which puts them in every module)::

    from tests.support.services import mariadb_server, mariadb_url, moto_server, s3  # noqa: F401

* ``mariadb_server`` (session): a throwaway MariaDB started from the Debian packages
  (``mariadb-install-db`` + ``mariadbd``) in a temporary directory, on a free port of
  127.0.0.1, with a user that has a real password (for ``'user'@'localhost'`` and
  ``'user'@'127.0.0.1'``), speaking TLS with a throwaway CA (``.ca_file``). Killed
  and deleted at the end of the session. When
  ``mariadbd`` is not installed the tests using it are skipped, or fail when the
  environment variable ``CI`` is set (``apt-get install mariadb-server``).
* ``mariadb_url`` (function): a fresh, empty database on that server, as a
  ``mysql+pymysql://`` URL string; dropped after the test.
* ``moto_server`` (session): ``moto.server.ThreadedMotoServer`` on a free port of
  127.0.0.1, with fake credentials in the environment and the developer's AWS
  configuration files replaced by empty ones (so no real profile is ever used).
* ``s3`` (function): the moto state reset (``POST /moto-api/reset``), s3fs's instance
  cache cleared, and a new bucket; gives ``.url(path)``, ``.storage_options`` and
  ``.fs``. ``AWS_ENDPOINT_URL`` is unset: code under test must reach the endpoint
  through the ``storage_options`` it is given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

MARIADB_SEARCH_PATH = ("/usr/sbin", "/usr/local/sbin", "/usr/libexec", "/usr/bin",
                       "/usr/local/bin", "/usr/local/mysql/bin")
MARIADB_USER = "preassign"
S3_BUCKET = "preassign-test"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_binary(*names: str) -> str | None:
    """The first of ``names`` on ``$PATH`` or in the usual sbin directories."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *MARIADB_SEARCH_PATH])
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)", pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------------------------
# MariaDB


@dataclasses.dataclass
class MariaDB:
    """A running throwaway MariaDB server."""

    base: str
    port: int
    password: str
    process: subprocess.Popen[bytes]
    user: str = MARIADB_USER

    @property
    def socket(self) -> str:
        return os.path.join(self.base, "sock")

    @property
    def ca_file(self) -> str:
        """The CA that signed the server's TLS certificate (for ``?ssl_ca=``)."""
        return os.path.join(self.base, "ca.pem")

    @property
    def error_log(self) -> str:
        return os.path.join(self.base, "error.log")

    def url(self, database: str, *, user: str | None = None, password: str | None = None,
            host: str = "127.0.0.1", port: int | None = None) -> str:
        """A ``mysql+pymysql://`` URL (password quoted as a URL needs)."""
        from sqlalchemy.engine import URL

        return URL.create(
            "mysql+pymysql",
            username=user or self.user,
            password=self.password if password is None else password,
            host=host,
            port=port or self.port,
            database=database,
        ).render_as_string(hide_password=False)

    @contextlib.contextmanager
    def admin(self) -> Iterator[Any]:
        """A root connection over the socket (autocommit)."""
        import pymysql

        conn = pymysql.connect(unix_socket=self.socket, user="root", autocommit=True)
        try:
            yield conn
        finally:
            conn.close()

    def execute(self, *statements: str) -> None:
        """Run statements as root."""
        with self.admin() as conn, conn.cursor() as cur:
            for stmt in statements:
                cur.execute(stmt)

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database made by :meth:`create_database`."""
        self.execute(f"DROP DATABASE IF EXISTS `{name}`")

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's error log."""
        return _log_tail(self.base, lines)


def _log_tail(base: str, lines: int = 20) -> str:
    try:
        with open(os.path.join(base, "error.log"), encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no error log)"


def make_test_ca(directory: str) -> dict[str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost (PEM files).

    Returns:
        Paths: ``ca``, ``cert``, ``key``.
    """
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "preassign test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {name: os.path.join(directory, f"{name}.pem") for name in ("ca", "cert", "key")}
    with open(paths["ca"], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert"], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["key"], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    return paths


def _start_mariadb(base: str, mariadbd: str, os_user: str, port: int) -> subprocess.Popen[bytes]:
    args = [
        mariadbd, "--no-defaults", f"--user={os_user}",
        f"--datadir={base}/data", f"--socket={base}/sock", f"--port={port}",
        "--bind-address=127.0.0.1", f"--pid-file={base}/mariadbd.pid",
        f"--log-error={base}/error.log", f"--tmpdir={base}",
        "--skip-name-resolve", "--skip-log-bin", "--default-time-zone=+00:00",
        "--character-set-server=utf8mb4", "--collation-server=utf8mb4_bin",
        "--innodb-buffer-pool-size=128M", "--innodb-flush-log-at-trx-commit=0",
        "--innodb-doublewrite=0", "--max-connections=200",
        f"--ssl-ca={base}/ca.pem", f"--ssl-cert={base}/cert.pem", f"--ssl-key={base}/key.pem",
    ]
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_ready(server: MariaDB, timeout: float) -> bool:
    import pymysql

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            with server.admin():
                return True
        except pymysql.err.OperationalError:
            time.sleep(0.2)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDB]:
    """A MariaDB server for the session (see the module docstring)."""
    mariadbd = find_binary("mariadbd")
    install_db = find_binary("mariadb-install-db", "mysql_install_db")
    if mariadbd is None or install_db is None:
        _skip_or_fail("MariaDB is not installed (mariadbd / mariadb-install-db not found); "
                      "install it with: apt-get install -y mariadb-server")
    assert mariadbd is not None and install_db is not None
    os_user = "root" if os.geteuid() == 0 else getpass.getuser()
    base = tempfile.mkdtemp(prefix="preassign-mariadb-")  # short: the socket path is limited
    try:
        init = subprocess.run(
            [install_db, "--no-defaults", f"--user={os_user}", f"--datadir={base}/data",
             "--auth-root-authentication-method=normal", "--skip-test-db",
             "--skip-name-resolve"],
            capture_output=True, text=True, timeout=180, check=False,
        )
        if init.returncode != 0:
            pytest.fail(f"mariadb-install-db failed ({init.returncode}):\n"
                        f"{init.stdout[-2000:]}\n{init.stderr[-2000:]}", pytrace=False)
        make_test_ca(base)  # the server also speaks TLS: <base>/ca.pem verifies it
        password = f"p@ss:{uuid.uuid4().hex[:10]}/%"  # characters a URL has to quote
        server: MariaDB | None = None
        for _attempt in range(3):
            port = free_port()
            process = _start_mariadb(base, mariadbd, os_user, port)
            server = MariaDB(base=base, port=port, password=password, process=process)
            if _wait_ready(server, timeout=60):
                break
            _stop(process)
            server = None
        if server is None:
            pytest.fail(f"mariadbd did not become ready; error log:\n{_log_tail(base)}",
                        pytrace=False)
        quoted = password.replace("'", "''")
        for host in ("localhost", "127.0.0.1"):
            server.execute(
                f"CREATE USER '{MARIADB_USER}'@'{host}' IDENTIFIED BY '{quoted}'",
                f"GRANT ALL PRIVILEGES ON *.* TO '{MARIADB_USER}'@'{host}'",
            )
        try:
            yield server
        finally:
            _stop(server.process)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def mariadb_url(mariadb_server: MariaDB) -> Iterator[str]:
    """A fresh empty database on the session's MariaDB, as a SQLAlchemy URL string."""
    name = mariadb_server.create_database()
    try:
        yield mariadb_server.url(name)
    finally:
        mariadb_server.drop_database(name)


@contextlib.contextmanager
def throwaway_mariadb(*, prefix: str = "preassign-mariadb-",
                      buffer_pool: str | None = None) -> Iterator[MariaDB]:
    """A MariaDB like the ``mariadb_server`` fixture's, for scripts outside pytest.

    Installed in a new temporary directory, with TLS (``.ca_file``) and the test user;
    stopped and deleted on exit. ``buffer_pool`` (e.g. ``"2G"``) resizes InnoDB's buffer
    pool once the server runs (the fixture's is 128M). Used by ``benchmarks/extract_bench.py``.

    Raises:
        RuntimeError: MariaDB is not installed, or the server does not start.
    """
    mariadbd = find_binary("mariadbd")
    install_db = find_binary("mariadb-install-db", "mysql_install_db")
    if mariadbd is None or install_db is None:
        raise RuntimeError("MariaDB is not installed (apt-get install -y mariadb-server)")
    os_user = "root" if os.geteuid() == 0 else getpass.getuser()
    base = tempfile.mkdtemp(prefix=prefix)  # short: the socket path is limited
    server: MariaDB | None = None
    try:
        subprocess.run([install_db, "--no-defaults", f"--user={os_user}",
                        f"--datadir={base}/data", "--auth-root-authentication-method=normal",
                        "--skip-test-db", "--skip-name-resolve"],
                       capture_output=True, timeout=180, check=True)
        make_test_ca(base)
        port = free_port()
        server = MariaDB(base=base, port=port, password=f"p@ss:{uuid.uuid4().hex[:10]}/%",
                         process=_start_mariadb(base, mariadbd, os_user, port))
        if not _wait_ready(server, timeout=60):
            raise RuntimeError(f"mariadbd did not become ready; error log:\n{_log_tail(base)}")
        quoted = server.password.replace("'", "''")
        for host in ("localhost", "127.0.0.1"):
            server.execute(
                f"CREATE USER '{MARIADB_USER}'@'{host}' IDENTIFIED BY '{quoted}'",
                f"GRANT ALL PRIVILEGES ON *.* TO '{MARIADB_USER}'@'{host}'",
            )
        if buffer_pool:
            server.execute(f"SET GLOBAL innodb_buffer_pool_size = {_bytes(buffer_pool)}")
        yield server
    finally:
        if server is not None:
            _stop(server.process)
        shutil.rmtree(base, ignore_errors=True)


def _bytes(size: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(size[:-1]) * units[size[-1].upper()] if size[-1].upper() in units else int(size)


# --------------------------------------------------------------------------------------------
# S3 (moto)


@dataclasses.dataclass
class S3Bucket:
    """A bucket on the moto endpoint, with the options fsspec/s3fs need to reach it."""

    endpoint_url: str
    bucket: str

    @property
    def storage_options(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint_url}

    def url(self, *parts: str) -> str:
        return "s3://" + "/".join([self.bucket, *[p.strip("/") for p in parts]])

    @property
    def fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options)


_AWS_UNSET = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_SECURITY_TOKEN",
)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 endpoint for the session; yields its URL (``http://127.0.0.1:PORT``)."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:  # pragma: no cover - moto[server] is a dev dependency
        _skip_or_fail("moto[server] is not installed (pip install 'moto[server]')")
    aws = tmp_path_factory.mktemp("aws")
    (aws / "config").write_text("")
    (aws / "credentials").write_text("")
    with pytest.MonkeyPatch.context() as mp:
        for var in _AWS_UNSET:
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_SESSION_TOKEN", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", str(aws / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(aws / "credentials"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()
            _clear_s3fs_cache()


def _clear_s3fs_cache() -> None:
    try:
        import s3fs
    except ImportError:  # pragma: no cover
        return
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3(moto_server: str) -> Iterator[S3Bucket]:
    """An empty bucket on a freshly reset moto endpoint."""
    request = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:  # the local moto server
        response.read()
    _clear_s3fs_cache()
    bucket = S3Bucket(moto_server, S3_BUCKET)
    bucket.fs.mkdir(S3_BUCKET)
    try:
        yield bucket
    finally:
        _clear_s3fs_cache()


# --------------------------------------------------------------------------------------------
# comparing lakes and run outputs (helpers, not fixtures)


def read_lake_tables(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every table of a lake as a normalised frame sorted by all its columns (None if absent)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from preassign.core.contract import TABLES, empty_table, normalize_table
    from preassign.lake import open_lake

    lake = open_lake(url, storage_options)
    out: dict[str, Any] = {}
    for name in TABLES:
        if not lake.has_table(name):
            out[name] = None
            continue
        parts = []
        for path in lake.files(name):
            with lake.fs.open(path, "rb") as f:
                parts.append(pq.read_table(f).to_pandas(types_mapper=pd.ArrowDtype))
        raw = pd.concat(parts, ignore_index=True) if parts else empty_table(name)
        frame, _, _ = normalize_table(name, raw)
        if "ingredients" in frame:
            frame["ingredients"] = frame["ingredients"].map("|".join)
        out[name] = frame.sort_values(list(frame.columns), kind="stable").reset_index(drop=True)
    return out


def assert_lakes_equal(left: dict[str, Any], right: dict[str, Any]) -> None:
    """Table by table, with the table's name in the failure."""
    import pandas as pd

    assert left.keys() == right.keys()
    for name, frame in left.items():
        other = right[name]
        if frame is None or other is None:
            assert frame is None and other is None, f"table {name} only on one side"
            continue
        try:
            pd.testing.assert_frame_equal(frame, other)
        except AssertionError as exc:
            raise AssertionError(f"table {name!r} differs: {exc}") from None


RUN_SUMMARY_KEYS = ("date_from", "date_to", "parameters", "users_targeted", "boxes_full",
                    "boxes_short", "units_total", "snacks_in_demand", "snacks_short",
                    "input_rows", "orphan_rows", "invalid_rows")


def read_run_outputs(out: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's outputs, sorted, plus the summary keys that do not depend on where it ran."""
    import json

    import fsspec
    import pandas as pd

    kwargs = {"storage_options": storage_options} if storage_options else {}
    fs, root = fsspec.core.url_to_fs(out, **(storage_options or {}))
    result: dict[str, Any] = {}
    keys = {"assignments": ["delivery_on", "user_id", "slot"],
            "demand": ["delivery_on", "snack_id"], "shortage": ["snack_id"]}
    for name, order in keys.items():
        if not fs.isdir(f"{root.rstrip('/')}/{name}"):
            result[name] = None
            continue
        frame = pd.read_parquet(f"{out.rstrip('/')}/{name}", **kwargs)
        result[name] = frame.sort_values(order).reset_index(drop=True)
    summary = json.loads(fs.cat_file(f"{root.rstrip('/')}/summary.json"))
    result["summary"] = {k: summary.get(k) for k in RUN_SUMMARY_KEYS}
    return result


def assert_runs_equal(left: dict[str, Any], right: dict[str, Any]) -> None:
    """Same assignments, demand, shortage and summary counts."""
    import pandas as pd

    assert left["summary"] == right["summary"]
    for name in ("assignments", "demand", "shortage"):
        if left[name] is None or right[name] is None:
            assert left[name] is None and right[name] is None, f"{name} only on one side"
            continue
        pd.testing.assert_frame_equal(left[name], right[name], obj=name)


def append_source_changes(url: str, round_no: int) -> dict[str, int]:
    """Change a loaded source database the way production does between two extractions.

    Appends ratings, deliveries and requests (some for new users, some orphans: unknown
    user or snack), adds users, pauses one, and rewrites some NG lists. Returns the
    orphan rows appended per table.
    """
    import datetime as dt

    import sqlalchemy as sa

    from preassign.source import create_engine_from_url, source_table

    engine = create_engine_from_url(url)
    t = {name: source_table(name) for name in
         ("users", "ratings", "deliveries", "requests", "ng_snacks", "snacks")}
    with engine.begin() as conn:
        max_user = conn.execute(sa.select(sa.func.max(t["users"].c.user_id))).scalar()
        n_snacks = conn.execute(sa.select(sa.func.count()).select_from(t["snacks"])).scalar()
        new_users = list(range(max_user + 1, max_user + 21))
        conn.execute(t["users"].insert(), [
            {"user_id": u, "status": "active", "next_delivery_on": dt.date(2026, 12, 2 + u % 5),
             "box_size": None if u % 2 else 6} for u in new_users])
        conn.execute(t["users"].update().where(t["users"].c.user_id == 2 + round_no)
                     .values(status="paused"))
        conn.execute(t["ng_snacks"].delete().where(t["ng_snacks"].c.user_id <= 10 * round_no))
        conn.execute(t["ng_snacks"].insert(), [
            {"user_id": u, "snack_id": 1 + (u + round_no) % n_snacks} for u in new_users])
        at = dt.datetime(2026, 11, 30, 8, round_no, 0, 123456)
        old_users = list(range(1, 60, 3))
        ratings = [{"user_id": u, "snack_id": 1 + (u * 7 + round_no) % n_snacks,
                    "rating": 1 + (u + round_no) % 4, "rated_at": at + dt.timedelta(seconds=u)}
                   for u in old_users + new_users]
        orphans = [{"user_id": -7, "snack_id": 1, "rating": 3, "rated_at": at},
                   {"user_id": 10**6 + round_no, "snack_id": 2, "rating": 4, "rated_at": at},
                   {"user_id": 1, "snack_id": 10_000, "rating": 2, "rated_at": at}]
        conn.execute(t["ratings"].insert(), ratings + orphans)
        conn.execute(t["deliveries"].insert(), [
            {"user_id": u, "snack_id": 1 + (u * 5 + round_no) % n_snacks,
             "delivered_on": dt.date(2026, 11, 20 + round_no)} for u in old_users])
        conn.execute(t["requests"].insert(), [
            {"user_id": u, "snack_id": 1 + (u * 3 + round_no) % n_snacks,
             "requested_at": at - dt.timedelta(days=2)} for u in old_users + new_users]
            + [{"user_id": 10**7, "snack_id": 1, "requested_at": at}])
    engine.dispose()
    return {"ratings": len(orphans), "deliveries": 0, "requests": 1}
