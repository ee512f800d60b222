"""Tests of preassign.cluster.identity: certificate expiry, personal certificates, interim.

No AWS: moto stands in for ACM Private CA, STS, SSM and Secrets Manager.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from preassign.cluster.config import check_key_file_mode, check_tls_files
from preassign.cluster.identity import (
    CLIENT_AUTH_TEMPLATE,
    certificate_validity,
    check_client_certificate,
    fetch_client_identity,
    issue_client_certificate,
    main,
)
from preassign.errors import InfrastructureError, UsageError
from tests.support.cluster import make_certs

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def make_cert(not_before: dt.datetime, not_after: dt.datetime, *, cn: str = "someone") -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


# ----------------------------------------------------------------------------- validity


@pytest.mark.parametrize(
    ("not_before", "not_after"),
    [
        (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), dt.datetime(2026, 1, 2, 15, 4, 5, tzinfo=UTC)),
        (dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC), dt.datetime(2049, 12, 31, tzinfo=UTC)),
        (dt.datetime(2026, 6, 1, tzinfo=UTC), dt.datetime(2051, 6, 1, tzinfo=UTC)),  # GeneralizedTime
    ],
    ids=["hours", "utctime-century", "generalizedtime"],
)
def test_certificate_validity_matches_cryptography(not_before: dt.datetime,
                                                   not_after: dt.datetime) -> None:
    pem = make_cert(not_before, not_after)
    cert = x509.load_pem_x509_certificate(pem.encode())
    assert certificate_validity(pem) == (cert.not_valid_before_utc, cert.not_valid_after_utc)
    # A chain: the first certificate counts.
    assert certificate_validity(pem + make_cert(NOW, NOW + dt.timedelta(days=1))) == (
        not_before, not_after)


def test_certificate_validity_of_make_certs_output(tmp_path: Path) -> None:
    make_certs(tmp_path / "tls")
    for path in (tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "tasks" / "cert.pem"):
        pem = path.read_text()
        cert = x509.load_pem_x509_certificate(pem.encode())
        assert certificate_validity(pem) == (cert.not_valid_before_utc, cert.not_valid_after_utc)


@pytest.mark.parametrize("text", ["", "hello", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
                                  "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----"])
def test_certificate_validity_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        certificate_validity(text)


# ----------------------------------------------------------------------------- expiry check


def _write(tmp_path: Path, pem: str) -> Path:
    path = tmp_path / "cert.pem"
    path.write_text(pem)
    return path


def test_current_certificate_passes_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path, make_cert(NOW - dt.timedelta(days=10), NOW + dt.timedelta(days=80)))
    with caplog.at_level(logging.WARNING):
        assert check_client_certificate(path, now=NOW) == NOW + dt.timedelta(days=80)
    assert caplog.text == ""


def test_expired_certificate_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, make_cert(NOW - dt.timedelta(hours=13), NOW - dt.timedelta(hours=1)))
    with pytest.raises(UsageError, match=r"expired at 2026-12-01 11:00 UTC; get a new one with "
                                         r"python -m preassign.cluster.identity issue"):
        check_client_certificate(path, now=NOW)


def test_not_yet_valid_certificate_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, make_cert(NOW + dt.timedelta(hours=1), NOW + dt.timedelta(days=1)))
    with pytest.raises(UsageError, match="check this machine's clock"):
        check_client_certificate(path, now=NOW)


@pytest.mark.parametrize(
    ("lifetime", "left", "warns"),
    [
        (dt.timedelta(days=365), dt.timedelta(days=8), False),
        (dt.timedelta(days=365), dt.timedelta(days=6), True),
        (dt.timedelta(hours=12), dt.timedelta(hours=4), False),   # a quarter of 12 h is 3 h
        (dt.timedelta(hours=12), dt.timedelta(hours=2), True),
    ],
    ids=["year-early", "year-late", "short-early", "short-late"],
)
def test_expiry_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                        lifetime: dt.timedelta, left: dt.timedelta, warns: bool) -> None:
    not_after = NOW + left
    path = _write(tmp_path, make_cert(not_after - lifetime, not_after))
    with caplog.at_level(logging.WARNING, logger="preassign.cluster.identity"):
        check_client_certificate(path, now=NOW, warn_before=dt.timedelta(days=7))
    assert ("expires in" in caplog.text) is warns
    if warns:
        assert "renew it with python -m preassign.cluster.identity issue" in caplog.text


def test_not_a_certificate(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a PEM certificate"):
        check_client_certificate(_write(tmp_path, "key material"), now=NOW)


# ----------------------------------------------------------------------------- key file mode


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    key = tmp_path / "key.pem"
    key.write_text("k")
    key.chmod(mode)
    with pytest.raises(UsageError, match=rf"mode {mode:04o}.*chmod 600 {key}"):
        check_key_file_mode(key)


def test_check_tls_files_checks_the_key_mode(tmp_path: Path) -> None:
    make_certs(tmp_path / "tls")
    settings = {"tls_ca_file": str(tmp_path / "tls" / "ca.pem"),
                "tls_cert": str(tmp_path / "tls" / "cert.pem"),
                "tls_key": str(tmp_path / "tls" / "key.pem")}
    check_tls_files(settings)
    os.chmod(settings["tls_key"], 0o644)
    with pytest.raises(UsageError, match="accessible by other users"):
        check_tls_files(settings)


# ----------------------------------------------------------------------------- AWS (moto)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    moto = pytest.importorskip("moto")
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    import botocore.session

    with moto.mock_aws():
        session = botocore.session.get_session()
        yield {name: session.create_client(name, region_name="eu-west-1")
               for name in ("acm-pca", "sts", "ssm", "secretsmanager")}


SERVER_CA_PARAMETER = "/preassign/test/server-ca"


def _config(tmp_path: Path, **tls: Any) -> Path:
    path = tmp_path / "cluster.yaml"
    laptop = tmp_path / "laptop"
    path.write_text(yaml.safe_dump({"tls": {
        "ca_file": str(laptop / "ca.pem"), "cert": str(laptop / "cert.pem"),
        "key": str(laptop / "key.pem"), "server_ca_parameter": SERVER_CA_PARAMETER, **tls}}))
    return path


def _private_ca(acmpca: Any) -> str:
    return acmpca.create_certificate_authority(
        CertificateAuthorityConfiguration={
            "KeyAlgorithm": "EC_prime256v1", "SigningAlgorithm": "SHA256WITHECDSA",
            "Subject": {"CommonName": "preassign people"}},
        CertificateAuthorityType="ROOT", UsageMode="SHORT_LIVED_CERTIFICATE",
    )["CertificateAuthorityArn"]


def test_issue_personal_certificate(aws: dict, tmp_path: Path) -> None:
    server_ca = make_cert(NOW, NOW + dt.timedelta(days=365), cn="preassign tasks CA")
    aws["ssm"].put_parameter(Name=SERVER_CA_PARAMETER, Value=server_ca, Type="String")
    ca_arn = _private_ca(aws["acm-pca"])
    calls: list[dict] = []

    class Recording:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            def call(**kwargs: Any) -> Any:
                calls.append({"method": name, **kwargs})
                return getattr(self.inner, name)(**kwargs)
            return call

    config = _config(tmp_path, private_ca_arn=ca_arn, certificate_hours=8)
    issue_client_certificate(config_path=config, acmpca=Recording(aws["acm-pca"]),
                             sts=aws["sts"], ssm=aws["ssm"])
    laptop = tmp_path / "laptop"
    for name in ("ca.pem", "cert.pem", "key.pem"):
        assert stat.S_IMODE((laptop / name).stat().st_mode) == 0o600, name
    assert (laptop / "ca.pem").read_text().strip() == server_ca.strip()
    [request] = [c for c in calls if c["method"] == "issue_certificate"]
    assert request["CertificateAuthorityArn"] == ca_arn
    assert request["TemplateArn"] == f"arn:aws:acm-pca:::{CLIENT_AUTH_TEMPLATE}"
    assert request["SigningAlgorithm"] == "SHA256WITHECDSA"
    assert request["Validity"]["Type"] == "ABSOLUTE"
    hours = (request["Validity"]["Value"] - dt.datetime.now(UTC).timestamp()) / 3600
    assert 7.9 < hours <= 8
    # The CSR names the caller; the key never left this machine.
    csr = x509.load_pem_x509_csr(request["Csr"])
    caller = aws["sts"].get_caller_identity()["Arn"]
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == caller.rsplit("/", 1)[-1]
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [caller]
    key = serialization.load_pem_private_key((laptop / "key.pem").read_bytes(), None)
    cert = x509.load_pem_x509_certificate((laptop / "cert.pem").read_bytes())
    assert cert.public_key() == key.public_key() == csr.public_key()
    assert b"PRIVATE KEY" not in request["Csr"]
    # (the template's client-auth-only EKU is ACM's to add; moto does not model it)


def test_issue_refuses_without_private_ca(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="tls.private_ca_arn is not set.*identity fetch"):
        issue_client_certificate(config_path=_config(tmp_path))


@pytest.mark.parametrize("hours", [0, 169])
def test_issue_refuses_long_or_empty_lifetimes(tmp_path: Path, hours: int) -> None:
    config = _config(tmp_path, private_ca_arn="arn:aws:acm-pca:eu-west-1:1:certificate-authority/x")
    with pytest.raises(UsageError, match="must be 1 to 168"):
        issue_client_certificate(config_path=config, hours=hours)


def test_issue_reports_a_refused_iam_check(aws: dict, tmp_path: Path) -> None:
    aws["ssm"].put_parameter(Name=SERVER_CA_PARAMETER, Value=make_cert(NOW, NOW), Type="String")
    ca_arn = _private_ca(aws["acm-pca"])

    class Denied(Exception):
        response = {"Error": {"Code": "AccessDeniedException", "Message": "not allowed"}}

    class DenyingPca:
        def describe_certificate_authority(self, **kwargs: Any) -> Any:
            return aws["acm-pca"].describe_certificate_authority(**kwargs)

        def issue_certificate(self, **kwargs: Any) -> Any:
            raise Denied()

    with pytest.raises(InfrastructureError, match="AccessDeniedException.*ClientIdentityPolicy"):
        issue_client_certificate(config_path=_config(tmp_path, private_ca_arn=ca_arn),
                                 acmpca=DenyingPca(), sts=aws["sts"], ssm=aws["ssm"])
    assert not (tmp_path / "laptop" / "key.pem").exists()


def test_fetch_interim_identity(aws: dict, tmp_path: Path) -> None:
    make_certs(tmp_path / "made")
    made = tmp_path / "made"
    aws["ssm"].put_parameter(Name=SERVER_CA_PARAMETER, Value=(made / "ca.pem").read_text(),
                             Type="String")
    arn = aws["secretsmanager"].create_secret(Name="client", SecretString=json.dumps(
        {"cert": (made / "cert.pem").read_text(), "key": (made / "key.pem").read_text()}))["ARN"]
    config = _config(tmp_path, client_secret_arn=arn)
    expires = fetch_client_identity(config_path=config, secrets=aws["secretsmanager"],
                                    ssm=aws["ssm"])
    laptop = tmp_path / "laptop"
    for name in ("ca.pem", "cert.pem", "key.pem"):
        assert (laptop / name).read_text().strip() == (made / name).read_text().strip()
        assert stat.S_IMODE((laptop / name).stat().st_mode) == 0o600
    assert expires == certificate_validity((made / "cert.pem").read_text())[1]


def test_fetch_refuses_a_placeholder(aws: dict, tmp_path: Path) -> None:
    arn = aws["secretsmanager"].create_secret(
        Name="client", SecretString='{"cert": "", "key": ""}')["ARN"]
    with pytest.raises(UsageError, match="holds no client identity yet.*make-certs.sh"):
        fetch_client_identity(config_path=_config(tmp_path, client_secret_arn=arn),
                              secrets=aws["secretsmanager"], ssm=aws["ssm"])


def test_fetch_needs_the_server_ca(aws: dict, tmp_path: Path) -> None:
    make_certs(tmp_path / "made")
    made = tmp_path / "made"
    arn = aws["secretsmanager"].create_secret(Name="client", SecretString=json.dumps(
        {"cert": (made / "cert.pem").read_text(), "key": (made / "key.pem").read_text()}))["ARN"]
    with pytest.raises(InfrastructureError, match=f"SSM parameter {SERVER_CA_PARAMETER}"):
        fetch_client_identity(config_path=_config(tmp_path, client_secret_arn=arn),
                              secrets=aws["secretsmanager"], ssm=aws["ssm"])


def test_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    laptop = tmp_path / "laptop"
    assert main(["--config", str(config), "check"]) == UsageError.exit_code
    make_certs(laptop)
    assert main(["--config", str(config), "check"]) == 0
    assert "client certificate valid until" in capsys.readouterr().out
    (laptop / "key.pem").chmod(0o644)
    assert main(["--config", str(config), "check"]) == UsageError.exit_code
    assert "chmod 600" in capsys.readouterr().err


def test_module_runs_as_a_command(tmp_path: Path) -> None:
    import sys

    done = subprocess.run([sys.executable, "-m", "preassign.cluster.identity", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for command in ("issue", "fetch", "check"):
        assert command in done.stdout
