"""Who may connect to a cluster: personal client certificates, their expiry, the interim.

Identities
----------
A Dask connection runs code on the workers with their AWS role, so the client certificate
*is* the credential. Tasks and people therefore hold different identities:

* **The tasks** (scheduler and workers) present a *server identity*, made by
  ``cluster/tls/make-certs.sh`` and kept in the stack's TLS secret, which only the task
  role may read (IAM policy, secret resource policy, customer-managed KMS key). Its
  ``ca.pem`` is a bundle: the CA of the server identity and the CA whose client
  certificates the tasks accept.
* **People** hold *personal client certificates*. With an ACM Private CA (stack parameter
  ``PrivateCaArn``, ``tls.private_ca_arn`` here) :func:`issue_client_certificate` makes a
  key on this machine (it never leaves it), and asks the CA for a certificate valid for
  a few hours (``tls.certificate_hours``, 12 by default, at most 7 days), named after the
  caller's AWS identity. The IAM check is ``acm-pca:IssueCertificate`` on that CA, limited
  by the stack's ``ClientIdentityPolicy`` to the client-authentication template, and
  CloudTrail records who was issued what. Offboarding is removing the person's IAM access:
  what they hold expires within hours.
* **Until a private CA is deployed** (the *interim*), people share one client identity
  kept in a second secret (``tls.client_secret_arn``) that only principals with the
  stack's ``ClientIdentityPolicy`` can read; :func:`fetch_client_identity` copies it here.
  It is separate from the tasks' identity, and on offboarding one command
  (``cluster/tls/make-certs.sh --force --stack NAME``) replaces both CAs, so copies held by
  anyone else stop working.

Either way, the CA certificate people need to check the scheduler (public) comes from an
SSM parameter (``tls.server_ca_parameter``), written by ``make-certs.sh``.

:func:`check_client_certificate` runs before every connection: it refuses an expired
certificate and warns when expiry is near. It parses the certificate's validity with the
standard library (:func:`certificate_validity`), so it needs no extra package; issuing
needs ``cryptography`` (``requirements-dev.lock``) and ``botocore``.

Command line: ``python -m preassign.cluster.identity issue|fetch|check`` (``--help``).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dask.utils import parse_timedelta

from ..errors import InfrastructureError, PreassignError, UsageError
from .config import check_key_file_mode, load_defaults

__all__ = [
    "CLIENT_AUTH_TEMPLATE",
    "MAX_CERTIFICATE_HOURS",
    "certificate_validity",
    "check_client_certificate",
    "fetch_client_identity",
    "issue_client_certificate",
    "main",
]

logger = logging.getLogger(__name__)

CLIENT_AUTH_TEMPLATE = "template/EndEntityClientAuthCertificate/V1"
"""The ACM Private CA template personal certificates are issued with (client auth only)."""

MAX_CERTIFICATE_HOURS = 7 * 24
"""Longest personal certificate (a short-lived-certificate mode CA issues at most 7 days)."""

_CLOCK_SKEW = dt.timedelta(minutes=5)
_PEM_CERT = re.compile(
    r"-----BEGIN CERTIFICATE-----\s*(?P<body>[A-Za-z0-9+/=\s]+?)\s*-----END CERTIFICATE-----"
)
_RENEW = (
    "python -m preassign.cluster.identity issue (with the interim shared identity: "
    "python -m preassign.cluster.identity fetch)"
)


# ----------------------------------------------------------------------------- validity


def _der_item(data: bytes, pos: int) -> tuple[int, int, int]:
    """Read one DER header at ``pos``: ``(tag, content start, content end)``."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _der_time(tag: int, raw: bytes) -> dt.datetime:
    text = raw.decode("ascii")
    if tag == 0x17:  # UTCTime, YYMMDDHHMMSSZ; years 50-99 are 19xx (RFC 5280)
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime, YYYYMMDDHHMMSSZ
        raise ValueError("not a time")
    return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.timezone.utc)


def certificate_validity(pem: str) -> tuple[dt.datetime, dt.datetime]:
    """Return ``(not_before, not_after)`` of the first certificate in a PEM text.

    Pure standard library (the validity sits at a fixed place of the DER structure:
    Certificate, tbsCertificate, [version], serial, signature, issuer, validity).

    Args:
        pem: Text holding at least one ``BEGIN CERTIFICATE`` block.

    Returns:
        The two times, timezone-aware (UTC).

    Raises:
        ValueError: If there is no certificate or it cannot be parsed.
    """
    match = _PEM_CERT.search(pem)
    if match is None:
        raise ValueError("no PEM certificate found")
    try:
        der = base64.b64decode("".join(match["body"].split()), validate=True)
    except binascii.Error as e:
        raise ValueError(f"bad base64 in certificate: {e}") from None
    try:
        _, start, _ = _der_item(der, 0)  # Certificate
        _, start, _ = _der_item(der, start)  # tbsCertificate
        tag, _, end = _der_item(der, start)
        pos = end if tag == 0xA0 else start  # optional [0] version
        for _ in range(3):  # serial, signature algorithm, issuer
            _, _, pos = _der_item(der, pos)
        _, validity, _ = _der_item(der, pos)
        tag1, s1, e1 = _der_item(der, validity)
        tag2, s2, e2 = _der_item(der, e1)
        return _der_time(tag1, der[s1:e1]), _der_time(tag2, der[s2:e2])
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the certificate's validity: {e}") from None


def check_client_certificate(
    path: str | os.PathLike[str],
    *,
    warn_before: dt.timedelta = dt.timedelta(days=7),
    now: dt.datetime | None = None,
) -> dt.datetime:
    """Refuse an expired client certificate; warn when it expires soon.

    The warning comes ``warn_before`` ahead of expiry, or a quarter of the certificate's
    lifetime ahead if that is shorter (3 hours for a 12-hour certificate), so that a
    short-lived personal certificate does not warn all its life.

    Args:
        path: The client certificate (PEM).
        warn_before: Warn when less than this remains.
        now: The current time (tests); default now, UTC.

    Returns:
        When the certificate expires.

    Raises:
        UsageError: If the file holds no certificate, it expired, or it is not valid yet,
            saying how to get a new one.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        not_before, not_after = certificate_validity(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"TLS certificate {path} is not a PEM certificate ({e})") from None
    if now >= not_after:
        raise UsageError(
            f"your client certificate {path} expired at {not_after:%Y-%m-%d %H:%M} UTC; get "
            f"a new one with {_RENEW}"
        )
    if now + _CLOCK_SKEW < not_before:
        raise UsageError(
            f"your client certificate {path} is valid only from {not_before:%Y-%m-%d %H:%M} "
            "UTC; check this machine's clock"
        )
    left = not_after - now
    if left <= min(warn_before, (not_after - not_before) / 4):
        logger.warning(
            "Your client certificate %s expires in %s (%s UTC); renew it with %s",
            path, _human(left), f"{not_after:%Y-%m-%d %H:%M}", _RENEW,
        )
    return not_after


def _human(delta: dt.timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes >= 48 * 60:
        return f"{minutes // (24 * 60)} days"
    if minutes >= 120:
        return f"{minutes // 60} hours"
    return f"{minutes} minutes"


# ----------------------------------------------------------------------------- files


def _write_private(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only, replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _tls_settings(config_path: str | os.PathLike[str] | None) -> dict[str, Any]:
    defaults = load_defaults(config_path)
    tls = dict(defaults["tls"])
    for key in ("ca_file", "cert", "key"):
        tls[key] = Path(str(tls[key])).expanduser()
    tls["region"] = defaults["fargate"].get("region")
    return tls


def _region_of(arn: str | None, fallback: str | None) -> str | None:
    parts = (arn or "").split(":")
    return parts[3] if len(parts) > 5 and parts[3] else fallback


def _client(service: str, region: str | None) -> Any:
    import botocore.session

    return botocore.session.get_session().create_client(service, region_name=region)


def _aws_error(e: Exception) -> str:
    response = getattr(e, "response", None) or {}
    error = response.get("Error", {})
    return f"{error.get('Code', type(e).__name__)}: {error.get('Message', e)}"


def _server_ca(ssm: Any, parameter: str | None) -> bytes:
    if not parameter:
        raise UsageError(
            "tls.server_ca_parameter is not set: name the SSM parameter of stack output "
            "ServerCaParameterName in your cluster defaults file (cluster/README.md)"
        )
    try:
        value = ssm.get_parameter(Name=parameter)["Parameter"]["Value"]
    except Exception as e:  # botocore ClientError or no credentials
        raise InfrastructureError(
            f"cannot read the tasks' CA certificate from SSM parameter {parameter} "
            f"({_aws_error(e)})"
        ) from None
    if _PEM_CERT.search(value) is None:
        raise UsageError(
            f"SSM parameter {parameter} holds no certificate yet: run "
            "cluster/tls/make-certs.sh --stack <stack name> first"
        )
    return value.strip().encode() + b"\n"


# ----------------------------------------------------------------------------- issue


def _caller_name(arn: str) -> str:
    """The short name of an IAM ARN: the user, or the session of an assumed role."""
    tail = arn.split(":", 5)[-1]
    return tail.rsplit("/", 1)[-1] or tail


def issue_client_certificate(
    *,
    config_path: str | os.PathLike[str] | None = None,
    hours: int | None = None,
    acmpca: Any = None,
    sts: Any = None,
    ssm: Any = None,
    poll_seconds: float = 1.0,
    timeout: float = 120.0,
) -> dt.datetime:
    """Issue a personal client certificate from the stack's ACM Private CA.

    Makes an EC P-256 key on this machine (written mode 600 to ``tls.key``; it never leaves
    this machine), a CSR whose common name is the caller's IAM user or role session and
    whose subject alternative name is the caller's full ARN (from ``sts:GetCallerIdentity``),
    and asks the CA (``tls.private_ca_arn``) for a certificate valid ``hours`` hours with the
    client-authentication template. Writes the certificate and its chain to ``tls.cert``
    and the tasks' CA certificate (SSM ``tls.server_ca_parameter``) to ``tls.ca_file``.

    Args:
        config_path: Cluster defaults file (default: ``PREASSIGN_CLUSTER_CONFIG``).
        hours: Lifetime, 1 to 168 (default ``tls.certificate_hours``).
        acmpca: A botocore ``acm-pca`` client (tests); default from this machine's AWS
            credentials.
        sts: A botocore ``sts`` client (tests).
        ssm: A botocore ``ssm`` client (tests).
        poll_seconds: Wait between polls for the issued certificate.
        timeout: Give up after this many seconds.

    Returns:
        When the new certificate expires.

    Raises:
        UsageError: If no private CA is configured, ``hours`` is out of range, or
            ``cryptography`` is missing.
        InfrastructureError: If an AWS call fails (e.g. the IAM check refuses).
    """
    tls = _tls_settings(config_path)
    ca_arn = tls.get("private_ca_arn")
    if not ca_arn:
        raise UsageError(
            "tls.private_ca_arn is not set, so there is no private CA to issue a personal "
            "certificate: deploy one (cluster/README.md, 'Personal certificates') or, until "
            "then, use the interim shared identity: python -m preassign.cluster.identity fetch"
        )
    hours = int(tls["certificate_hours"] if hours is None else hours)
    if not 1 <= hours <= MAX_CERTIFICATE_HOURS:
        raise UsageError(f"certificate hours must be 1 to {MAX_CERTIFICATE_HOURS}; got {hours}")
    crypto = _cryptography()
    region = _region_of(ca_arn, tls["region"])
    acmpca = acmpca or _client("acm-pca", region)
    sts = sts or _client("sts", region)
    ssm = ssm or _client("ssm", region)
    partition = ca_arn.split(":")[1]
    try:
        caller = sts.get_caller_identity()["Arn"]
        signing = acmpca.describe_certificate_authority(CertificateAuthorityArn=ca_arn)[
            "CertificateAuthority"]["CertificateAuthorityConfiguration"]["SigningAlgorithm"]
    except Exception as e:
        raise InfrastructureError(f"cannot use private CA {ca_arn} ({_aws_error(e)})") from None
    server_ca = _server_ca(ssm, tls.get("server_ca_parameter"))

    x509, ec, hashes, serialization, NameOID = crypto
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, _caller_name(caller)[:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "preassign cluster users"),
        ]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(caller)]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=hours)
    try:
        certificate_arn = acmpca.issue_certificate(
            CertificateAuthorityArn=ca_arn,
            Csr=csr.public_bytes(serialization.Encoding.PEM),
            SigningAlgorithm=signing,
            TemplateArn=f"arn:{partition}:acm-pca:::{CLIENT_AUTH_TEMPLATE}",
            Validity={"Type": "ABSOLUTE", "Value": int(expires.timestamp())},
            IdempotencyToken=uuid.uuid4().hex[:36],
        )["CertificateArn"]
        issued = _wait_for_certificate(acmpca, ca_arn, certificate_arn, poll_seconds, timeout)
    except InfrastructureError:
        raise
    except Exception as e:
        raise InfrastructureError(
            f"private CA {ca_arn} refused to issue a certificate for {caller} "
            f"({_aws_error(e)}); your role needs the stack's ClientIdentityPolicy"
        ) from None
    chain = issued.get("CertificateChain", "")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(tls["key"], key_pem)
    _write_private(tls["cert"], (issued["Certificate"].strip() + "\n" +
                                 (chain.strip() + "\n" if chain.strip() else "")).encode())
    _write_private(tls["ca_file"], server_ca)
    not_after = certificate_validity(issued["Certificate"])[1]
    logger.info("Issued a client certificate for %s (%s), valid until %s UTC", caller,
                certificate_arn, f"{not_after:%Y-%m-%d %H:%M}")
    return not_after


def _wait_for_certificate(acmpca: Any, ca_arn: str, certificate_arn: str, poll: float,
                          timeout: float) -> Mapping[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return acmpca.get_certificate(CertificateAuthorityArn=ca_arn,
                                          CertificateArn=certificate_arn)
        except Exception as e:
            code = (getattr(e, "response", None) or {}).get("Error", {}).get("Code")
            if code != "RequestInProgressException" or time.monotonic() > deadline:
                raise
            time.sleep(poll)


def _cryptography() -> tuple[Any, Any, Any, Any, Any]:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        raise UsageError(
            "issuing a certificate needs the cryptography package: install the development "
            "environment (make install, from requirements-dev.lock) or pip install cryptography"
        ) from None
    return x509, ec, hashes, serialization, NameOID


# ----------------------------------------------------------------------------- interim


def fetch_client_identity(
    *,
    config_path: str | os.PathLike[str] | None = None,
    secrets: Any = None,
    ssm: Any = None,
) -> dt.datetime:
    """Copy the interim shared client identity to this machine (no private CA yet).

    Reads ``{"cert": PEM, "key": PEM}`` from ``tls.client_secret_arn`` (IAM check:
    ``secretsmanager:GetSecretValue`` through the stack's ``ClientIdentityPolicy``) and the
    tasks' CA certificate from ``tls.server_ca_parameter``; writes ``tls.cert``,
    ``tls.key`` and ``tls.ca_file``, mode 600.

    Args:
        config_path: Cluster defaults file (default: ``PREASSIGN_CLUSTER_CONFIG``).
        secrets: A botocore ``secretsmanager`` client (tests).
        ssm: A botocore ``ssm`` client (tests).

    Returns:
        When the shared certificate expires.

    Raises:
        UsageError: If no client secret is configured or it holds no identity yet.
        InfrastructureError: If the secret cannot be read.
    """
    tls = _tls_settings(config_path)
    arn = tls.get("client_secret_arn")
    if not arn:
        raise UsageError(
            "tls.client_secret_arn is not set: name the secret of stack output "
            "ClientTlsSecretArn in your cluster defaults file (with a private CA, use "
            "python -m preassign.cluster.identity issue instead)"
        )
    region = _region_of(arn, tls["region"])
    secrets = secrets or _client("secretsmanager", region)
    ssm = ssm or _client("ssm", region)
    try:
        value = json.loads(secrets.get_secret_value(SecretId=arn)["SecretString"])
    except Exception as e:
        raise InfrastructureError(
            f"cannot read the client identity {arn} ({_aws_error(e)}); your role needs the "
            "stack's ClientIdentityPolicy"
        ) from None
    if not all(isinstance(value.get(k), str) and value[k].strip() for k in ("cert", "key")):
        raise UsageError(
            f"secret {arn} holds no client identity yet: run cluster/tls/make-certs.sh "
            "--stack <stack name>"
        )
    server_ca = _server_ca(ssm, tls.get("server_ca_parameter"))
    _write_private(tls["key"], value["key"].strip().encode() + b"\n")
    _write_private(tls["cert"], value["cert"].strip().encode() + b"\n")
    _write_private(tls["ca_file"], server_ca)
    return certificate_validity(value["cert"])[1]


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m preassign.cluster.identity``.

    Args:
        argv: The arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or the :mod:`preassign.errors` exit code of the failure.
    """
    parser = argparse.ArgumentParser(
        prog="python -m preassign.cluster.identity",
        description="Your client certificate for preassign's Dask clusters (cluster/README.md).",
    )
    parser.add_argument("--config", help="cluster defaults file (default: "
                                         "$PREASSIGN_CLUSTER_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True)
    issue = commands.add_parser("issue", help="issue a personal certificate from the private CA")
    issue.add_argument("--hours", type=int, help="lifetime in hours (default: "
                                                 "tls.certificate_hours, at most 168)")
    commands.add_parser("fetch", help="copy the interim shared client identity")
    commands.add_parser("check", help="show when your certificate expires; exit 2 if it did")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "issue":
            expires = issue_client_certificate(config_path=args.config, hours=args.hours)
        elif args.command == "fetch":
            expires = fetch_client_identity(config_path=args.config)
        else:
            tls = _tls_settings(args.config)
            check_key_file_mode(tls["key"])
            expires = check_client_certificate(
                tls["cert"], warn_before=dt.timedelta(
                    seconds=parse_timedelta(tls["expiry_warning"])))
    except PreassignError as e:
        print(f"Error: {e}", file=sys.stderr)
        return e.exit_code
    except FileNotFoundError as e:
        print(f"Error: {e.filename} does not exist; run issue or fetch first", file=sys.stderr)
        return UsageError.exit_code
    print(f"client certificate valid until {expires:%Y-%m-%d %H:%M} UTC")
    return 0


if __name__ == "__main__":  # pragma: no cover - the command line
    sys.exit(main())
