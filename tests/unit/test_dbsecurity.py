"""Tests of preassign.dbsecurity: TLS to the source database, and the password reference."""

from __future__ import annotations

import json
import logging
import pickle

import pytest
from sqlalchemy.engine import make_url

from preassign.dbsecurity import (
    SOURCE_PASSWORD_ENV,
    SOURCE_PASSWORD_SECRET_ENV,
    SecretURL,
    check_source_transport,
    is_loopback_host,
    secret_reference_from_environment,
)
from preassign.errors import InfrastructureError, UsageError

PASSWORD = "pa55-w0rd-never-shown"


# ----------------------------------------------------------------------------- transport


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///snacks.db",
        "sqlite:////abs/snacks.db",
        f"mysql+pymysql://app:{PASSWORD}@127.0.0.1:3306/snacks",
        f"mysql+pymysql://app:{PASSWORD}@127.0.0.2/snacks",
        f"mysql+pymysql://app:{PASSWORD}@localhost/snacks",
        f"mysql+pymysql://app:{PASSWORD}@[::1]:3306/snacks",
        "mysql+pymysql://app@/snacks?unix_socket=/run/mysqld/mysqld.sock",
        f"mysql+pymysql://app:{PASSWORD}@db.internal:3306/snacks?ssl_ca=/etc/ssl/rds.pem",
        f"mysql+pymysql://app:{PASSWORD}@db.internal/snacks?ssl_capath=/etc/ssl/certs",
        f"mysql+pymysql://app:{PASSWORD}@db.internal/snacks?ssl_ca=/ca.pem&ssl_check_hostname=true",
        f"mysql+pymysql://app:{PASSWORD}@db.internal/snacks?ssl_ca=/ca.pem&ssl_cert=/c.pem&ssl_key=/k.pem",
        f"mariadb+pymysql://app:{PASSWORD}@10.0.3.7/snacks?ssl_ca=/ca.pem",
        f"mysql://app:{PASSWORD}@db.internal/snacks?ssl_ca=/ca.pem",
    ],
    ids=["sqlite-rel", "sqlite-abs", "loopback-v4", "loopback-127/8", "localhost", "loopback-v6",
         "unix-socket", "ssl-ca", "ssl-capath", "check-hostname-on", "client-cert",
         "mariadb-ip-ssl", "bare-mysql-ssl"],
)
def test_secure_or_local_urls_are_accepted(url: str) -> None:
    check_source_transport(url)
    check_source_transport(make_url(url))


@pytest.mark.parametrize(
    "url",
    [
        f"mysql+pymysql://app:{PASSWORD}@db.internal:3306/snacks",
        f"mysql+pymysql://app:{PASSWORD}@10.0.3.7/snacks",
        f"mariadb+pymysql://app:{PASSWORD}@aurora.cluster-ro-x.eu-west-1.rds.amazonaws.com/snacks",
        f"mysql+pymysql://app:{PASSWORD}@db.internal/snacks?ssl_ca=",
        f"mysql+pymysql://app:{PASSWORD}@db.internal/snacks?ssl_cert=/c.pem&ssl_key=/k.pem",
        f"mysql+pymysql://app:{PASSWORD}@localhost.evil.example/snacks",
    ],
    ids=["name", "private-ip", "aurora", "empty-ca", "client-cert-no-ca", "localhost-lookalike"],
)
def test_remote_mysql_without_ca_is_refused(url: str) -> None:
    with pytest.raises(UsageError) as info:
        check_source_transport(url)
    message = str(info.value)
    host = make_url(url).host
    assert f"the source database {host}" in message
    assert "?ssl_ca=" in message
    assert "--insecure-db" in message
    assert "require_secure_transport=ON" in message
    assert PASSWORD not in message and "app:" not in message


def test_insecure_flag_allows_a_lab_database_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    url = f"mysql+pymysql://app:{PASSWORD}@lab-db:3306/snacks"
    with caplog.at_level(logging.WARNING, logger="preassign.dbsecurity"):
        check_source_transport(url, insecure=True)
    assert "lab-db:3306" in caplog.text and "--insecure-db" in caplog.text
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("ssl_check_hostname=false", "ssl_check_hostname=false"),
        ("ssl_check_hostname=0", "ssl_check_hostname=false"),
        ("ssl_check_hostname=False", "ssl_check_hostname=false"),
        ("ssl_verify_identity=false", "ssl_verify_identity"),
        ("ssl_verify_cert=false", "ssl_verify_cert"),
        ("ssl_verify_cert=true", "ssl_verify_cert"),
        ("ssl_disabled=true", "ssl_disabled"),
        ("ssl_mode=DISABLED", "ssl_mode"),
        ("ssl=false", "ssl"),
    ],
)
@pytest.mark.parametrize("host", ["db.internal", "127.0.0.1"], ids=["remote", "loopback"])
@pytest.mark.parametrize("insecure", [False, True], ids=["secure", "insecure-db"])
def test_verification_can_never_be_switched_off(query: str, named: str, host: str,
                                                insecure: bool) -> None:
    url = f"mysql+pymysql://app:{PASSWORD}@{host}/snacks?ssl_ca=/ca.pem&{query}"
    with pytest.raises(UsageError, match=named) as info:
        check_source_transport(url, insecure=insecure)
    assert PASSWORD not in str(info.value)


def test_unparsable_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(UsageError, match="cannot parse") as info:
        check_source_transport(f"not a url {PASSWORD}")
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    ("host", "expected"),
    [(None, True), ("", True), ("localhost", True), ("LOCALHOST", True), ("127.8.9.10", True),
     ("::1", True), ("[::1]", True), ("10.0.0.1", False), ("0.0.0.0", False),
     ("db.internal", False), ("127.0.0.1.nip.io", False)],
)
def test_is_loopback_host(host: str | None, expected: bool) -> None:
    assert is_loopback_host(host) is expected


# ----------------------------------------------------------------------------- SecretURL


def test_secret_url_pickle_and_repr_never_hold_the_password() -> None:
    ref = SecretURL("mysql+pymysql://etl@db.internal:3306/snacks?ssl_ca=/ca.pem",
                    password_env=SOURCE_PASSWORD_ENV)
    resolved = ref.resolve({SOURCE_PASSWORD_ENV: PASSWORD})
    assert resolved.password == PASSWORD
    assert resolved.host == "db.internal" and resolved.query["ssl_ca"] == "/ca.pem"
    for text in (repr(ref), str(ref), ref.masked()):
        assert PASSWORD not in text
    assert "***" in ref.masked()
    blob = pickle.dumps(ref)
    assert PASSWORD.encode() not in blob
    again = pickle.loads(blob)
    assert again == ref
    assert again.resolve({SOURCE_PASSWORD_ENV: PASSWORD}) == resolved


def test_secret_url_pickled_by_cloudpickle_as_dask_does() -> None:
    cloudpickle = pytest.importorskip("cloudpickle")
    ref = SecretURL(make_url("mysql+pymysql://etl@db/snacks"), password_env="DB_PW")
    blob = cloudpickle.dumps(lambda: ref.resolve())
    assert PASSWORD.encode() not in blob
    assert b"DB_PW" in blob


def test_secret_url_refuses_a_url_with_a_password() -> None:
    with pytest.raises(UsageError, match="without its password") as info:
        SecretURL(f"mysql+pymysql://etl:{PASSWORD}@db/snacks", password_env="X")
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"password_env": "A", "secret_arn": "arn:aws:secretsmanager:eu-west-1:1:secret:x"},
         "not both"),
        ({"password_env": " "}, "must name an environment variable"),
        ({"secret_arn": "my-secret"}, "must be a Secrets Manager ARN"),
    ],
)
def test_secret_url_bad_sources(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        SecretURL("mysql+pymysql://etl@db/snacks", **kwargs)


def test_secret_url_missing_env_names_the_variable_not_a_value() -> None:
    ref = SecretURL("mysql+pymysql://etl@db.internal/snacks", password_env="DB_PW")
    with pytest.raises(UsageError, match=r"\$DB_PW is not set on this machine.*db.internal"):
        ref.resolve({})


def test_secret_url_without_source_is_the_url() -> None:
    ref = SecretURL("sqlite:///snacks.db")
    assert ref.resolve({}) == make_url("sqlite:///snacks.db")
    assert repr(ref) == "SecretURL('sqlite:///snacks.db', no password)"


class _FakeSecrets:
    def __init__(self, value: str | Exception) -> None:
        self.value = value
        self.calls: list[str] = []

    def get_secret_value(self, SecretId: str) -> dict:
        self.calls.append(SecretId)
        if isinstance(self.value, Exception):
            raise self.value
        return {"SecretString": self.value}


ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:preassign/source-AbCdEf"


def test_secret_url_reads_an_rds_style_secret() -> None:
    ref = SecretURL("mysql+pymysql://etl@db/snacks?ssl_ca=/ca.pem", secret_arn=ARN)
    client = _FakeSecrets(json.dumps({"username": "etl", "password": PASSWORD}))
    assert ref.resolve(secrets_client=client).password == PASSWORD
    assert client.calls == [ARN]
    assert PASSWORD.encode() not in pickle.dumps(ref)
    assert ARN in repr(ref)


def test_secret_url_reads_a_plain_secret() -> None:
    ref = SecretURL("mysql+pymysql://etl@db/snacks", secret_arn=ARN, secret_key=None)
    assert ref.resolve(secrets_client=_FakeSecrets(PASSWORD)).password == PASSWORD


def test_secret_url_secret_without_key() -> None:
    ref = SecretURL("mysql+pymysql://etl@db/snacks", secret_arn=ARN)
    with pytest.raises(UsageError, match="'password' key") as info:
        ref.resolve(secrets_client=_FakeSecrets(json.dumps({"pw": PASSWORD})))
    assert PASSWORD not in str(info.value)


def test_secret_url_unreadable_secret() -> None:
    error = RuntimeError("denied")
    error.response = {"Error": {"Code": "AccessDeniedException"}}  # type: ignore[attr-defined]
    ref = SecretURL("mysql+pymysql://etl@db/snacks", secret_arn=ARN)
    with pytest.raises(InfrastructureError, match="AccessDeniedException.*GetSecretValue"):
        ref.resolve(secrets_client=_FakeSecrets(error))


def test_secret_url_reads_the_secret_from_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    moto = pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with moto.mock_aws():
        arn = boto3.client("secretsmanager", region_name="eu-west-1").create_secret(
            Name="preassign/source", SecretString=json.dumps({"password": PASSWORD}))["ARN"]
        ref = SecretURL("mysql+pymysql://etl@db/snacks", secret_arn=arn)
        assert ref.resolve().password == PASSWORD


# ----------------------------------------------------------------------------- from the environment


def test_reference_from_password_env() -> None:
    ref = secret_reference_from_environment("mysql+pymysql://etl@db/snacks",
                                            {SOURCE_PASSWORD_ENV: PASSWORD})
    assert ref == SecretURL("mysql+pymysql://etl@db/snacks", password_env=SOURCE_PASSWORD_ENV)


def test_reference_from_secret_arn_env_wins() -> None:
    ref = secret_reference_from_environment(
        "mysql+pymysql://etl@db/snacks",
        {SOURCE_PASSWORD_ENV: PASSWORD, SOURCE_PASSWORD_SECRET_ENV: ARN})
    assert ref is not None and ref.secret_arn == ARN and ref.password_env is None


def test_no_reference_for_a_url_holding_its_password() -> None:
    assert secret_reference_from_environment(f"mysql+pymysql://etl:{PASSWORD}@db/snacks", {}) is None
    assert secret_reference_from_environment("sqlite:///x.db", {}) is None


def test_password_in_url_and_env_is_ambiguous() -> None:
    with pytest.raises(UsageError, match="one way only") as info:
        secret_reference_from_environment(f"mysql+pymysql://etl:{PASSWORD}@db/snacks",
                                          {SOURCE_PASSWORD_ENV: "other"})
    assert PASSWORD not in str(info.value)
