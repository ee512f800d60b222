"""Transport security of the source database, and a password workers never receive.

Two things a security review asks of the extraction, kept out of :mod:`preassign.source`
so that the CLI, the extraction and the tests share one implementation:

* :func:`check_source_transport` refuses a MySQL/MariaDB URL to a host that is not this
  machine unless it names the CA that authenticates the server (``?ssl_ca=`` or
  ``?ssl_capath=``), and refuses, for every host, the query parameters that would turn
  certificate or host name checks off. A lab database without TLS is reachable only with
  an explicit ``insecure=True`` (the CLI's ``--insecure-db``).
* :class:`SecretURL` is what the client sends to Dask workers instead of a URL holding a
  password: the URL without its password plus *where* a worker finds the password (an
  environment variable, which ECS fills from Secrets Manager through a task definition's
  ``secrets``, or a Secrets Manager secret the worker reads with its own role). Its
  ``repr`` and its pickle (what travels in the task graph) never hold the password;
  :meth:`SecretURL.resolve` builds the real URL on the worker, when it connects.

Why the query parameters matter: with SQLAlchemy's PyMySQL dialect, ``ssl_ca``,
``ssl_capath``, ``ssl_cert``, ``ssl_key``, ``ssl_cipher`` and ``ssl_check_hostname`` become
PyMySQL's ``ssl`` dictionary, which verifies the certificate and the host name. Any other
``ssl_*`` parameter (``ssl_verify_cert``, ``ssl_verify_identity``, ``ssl_disabled``) is
passed to ``pymysql.connect`` as a keyword, and PyMySQL then *replaces* that dictionary by
one without the CA: the server certificate is no longer checked against ``ssl_ca``, nor its
host name. So only the first six are accepted.

This module imports SQLAlchemy's URL type and the standard library only; ``botocore`` is
imported on a worker when a :class:`SecretURL` names a Secrets Manager secret.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import URL, make_url

from .errors import InfrastructureError, UsageError

__all__ = [
    "ALLOWED_SSL_PARAMETERS",
    "INSECURE_DB_FLAG",
    "SOURCE_PASSWORD_ENV",
    "SOURCE_PASSWORD_SECRET_ENV",
    "SecretURL",
    "check_source_transport",
    "is_loopback_host",
    "secret_reference_from_environment",
]

log = logging.getLogger(__name__)

INSECURE_DB_FLAG = "--insecure-db"
"""The CLI flag that allows a database without TLS (named in the error messages)."""

SOURCE_PASSWORD_ENV = "PREASSIGN_SOURCE_PASSWORD"
"""Environment variable holding the source database password (ECS ``secrets`` fill it)."""

SOURCE_PASSWORD_SECRET_ENV = "PREASSIGN_SOURCE_PASSWORD_SECRET_ARN"
"""Environment variable naming a Secrets Manager secret that holds the password."""

ALLOWED_SSL_PARAMETERS = frozenset(
    {"ssl_ca", "ssl_capath", "ssl_cert", "ssl_key", "ssl_cipher", "ssl_check_hostname"}
)
"""The ``ssl_*`` URL parameters that keep certificate and host name verification on."""

_MYSQL_BACKENDS = ("mysql", "mariadb")
_FALSE = {"0", "false", "no", "off", "n", "f"}
_RDS_BUNDLE = "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem"


def is_loopback_host(host: str | None) -> bool:
    """Whether a host name or address is this machine (``localhost`` or a loopback IP).

    Args:
        host: A host as it appears in a URL; brackets around IPv6 addresses are allowed.
            None and ``""`` mean the driver's default, ``localhost``.

    Returns:
        True for ``localhost``, 127.0.0.0/8 and ``::1``; False for anything else,
        including names that might resolve to a loopback address (they are not trusted).

    Examples:
        >>> is_loopback_host("127.0.0.1"), is_loopback_host("[::1]"), is_loopback_host(None)
        (True, True, True)
        >>> is_loopback_host("db.example.com"), is_loopback_host("10.0.0.5")
        (False, False)
    """
    if not host:
        return True
    text = host.strip().strip("[]").lower()
    if text == "localhost" or text.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def _where(url: URL) -> str:
    """The host (and port) a URL points at, for messages; never user or password."""
    host = url.host or "localhost"
    return f"{host}:{url.port}" if url.port else host


def _query_value(url: URL, key: str) -> str:
    value = url.query.get(key)
    if isinstance(value, tuple):
        value = value[-1] if value else ""
    return "" if value is None else str(value)


def check_source_transport(url: URL | str, *, insecure: bool = False) -> None:
    """Refuse a source database URL that would talk to a remote MySQL without verified TLS.

    Allowed: SQLite and other non-MySQL backends (checked elsewhere); MySQL/MariaDB on this
    machine (``localhost``, 127.0.0.0/8, ``::1``, or ``?unix_socket=``); MySQL/MariaDB
    elsewhere when the URL names the CA that signed the server certificate
    (``?ssl_ca=`` or ``?ssl_capath=``), in which case PyMySQL checks the certificate and the
    host name. ``insecure=True`` (``--insecure-db``) lifts the CA requirement for a lab
    database, with a warning; it never allows switching certificate or host name checks
    off, which are refused for every host.

    Args:
        url: The source URL (a :class:`~sqlalchemy.engine.URL` or its text).
        insecure: Allow a remote MySQL without ``ssl_ca`` (plain text or unverified TLS).

    Raises:
        UsageError: Naming the host (never the user or password) and how to fix the URL.

    Examples:
        >>> check_source_transport("sqlite:///snacks.db")
        >>> check_source_transport("mysql+pymysql://app:pw@127.0.0.1/snacks")
        >>> check_source_transport("mysql+pymysql://app:pw@db.internal/snacks?ssl_ca=/ca.pem")
        >>> check_source_transport("mysql+pymysql://app:pw@db.internal/snacks")
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        preassign.errors.UsageError: the source database db.internal is not on this machine ...
    """
    parsed = url if isinstance(url, URL) else _parse(url)
    backend = parsed.get_backend_name()
    if backend not in _MYSQL_BACKENDS:
        return
    where = _where(parsed)
    refused = sorted(
        key for key in parsed.query
        if key.lower().startswith("ssl") and key not in ALLOWED_SSL_PARAMETERS
    )
    if refused:
        raise UsageError(
            f"the source database URL for {where} sets {', '.join(refused)}: with PyMySQL "
            "these replace the TLS settings, so the server certificate and host name would "
            "no longer be checked against ssl_ca. Remove them and use only "
            f"{', '.join(sorted(ALLOWED_SSL_PARAMETERS))}"
        )
    if _query_value(parsed, "ssl_check_hostname").strip().lower() in _FALSE and (
        "ssl_check_hostname" in parsed.query
    ):
        raise UsageError(
            f"the source database URL for {where} sets ssl_check_hostname=false: anyone on "
            "the network path holding any certificate from the same CA could pose as the "
            "server. Remove it, and connect with the host name the certificate names (for "
            "Aurora, the cluster or reader endpoint, not an IP address)"
        )
    if _query_value(parsed, "unix_socket") or is_loopback_host(parsed.host):
        return
    has_ca = bool(_query_value(parsed, "ssl_ca").strip() or
                  _query_value(parsed, "ssl_capath").strip())
    if has_ca:
        return
    if insecure:
        log.warning(
            "the source database %s is reached without verified TLS (%s): the password and "
            "the data cross the network in a form others may read or alter", where,
            INSECURE_DB_FLAG,
        )
        return
    raise UsageError(
        f"the source database {where} is not on this machine and its URL names no CA "
        "(?ssl_ca=): the password and the data would cross the network without verified "
        "TLS. Add ?ssl_ca=/path/to/ca.pem to the URL (for RDS and Aurora the global bundle, "
        f"{_RDS_BUNDLE}), and require TLS on the server (require_secure_transport=ON); for "
        f"a lab database only, pass {INSECURE_DB_FLAG}"
    )


def _parse(text: str) -> URL:
    try:
        return make_url(str(text).strip())
    except Exception:  # noqa: BLE001 - sqlalchemy raises ArgumentError; never echo the text
        raise UsageError(
            "cannot parse the source database URL; expected "
            "dialect+driver://user@host:port/database?ssl_ca=/path/to/ca.pem"
        ) from None


@dataclasses.dataclass(frozen=True, repr=False)
class SecretURL:
    """A source URL without its password, and where a worker finds the password.

    Send this to Dask workers instead of a :class:`~sqlalchemy.engine.URL` holding a
    password: pickled (the task graph) or printed, it holds the URL without the password and
    the *name* of the password's source. Exactly one source is set, or none for a URL that
    needs no password (SQLite, a socket with ``auth_socket``).

    Attributes:
        url: The URL with no password (a ``URL``; text is parsed).
        password_env: Environment variable holding the password on the worker. On Fargate
            the task definition's ``secrets`` fill it from Secrets Manager when the task
            starts, so it never appears in the task definition, RunTask or CloudTrail.
        secret_arn: A Secrets Manager secret the worker reads with its own AWS role.
        secret_key: With ``secret_arn``, the JSON key holding the password (``password``
            in the format RDS and its rotation functions use); None for a secret whose
            whole string is the password.

    Raises:
        UsageError: If ``url`` holds a password or both sources are given.

    Examples:
        >>> ref = SecretURL("mysql+pymysql://etl@db/snacks", password_env="DB_PW")
        >>> ref
        SecretURL('mysql+pymysql://etl:***@db/snacks', password from $DB_PW)
        >>> ref.resolve({"DB_PW": "s3cret"}).password
        's3cret'
    """

    url: URL
    password_env: str | None = None
    secret_arn: str | None = None
    secret_key: str | None = "password"

    def __post_init__(self) -> None:
        """Parse a text URL and refuse one that holds a password."""
        url = self.url if isinstance(self.url, URL) else _parse(self.url)
        if url.password is not None:
            raise UsageError(
                "SecretURL takes the URL without its password (it is what travels to the "
                "workers); give the password through password_env or secret_arn"
            )
        if self.password_env and self.secret_arn:
            raise UsageError("SecretURL takes password_env or secret_arn, not both")
        if self.password_env is not None and not self.password_env.strip():
            raise UsageError("SecretURL.password_env must name an environment variable")
        if self.secret_arn is not None and not self.secret_arn.startswith("arn:"):
            raise UsageError("SecretURL.secret_arn must be a Secrets Manager ARN (arn:...)")
        object.__setattr__(self, "url", url)

    def __repr__(self) -> str:
        """Show the URL (no password to hide) and where the password comes from."""
        return f"SecretURL({self.masked()!r}, {self._source()})"

    def __str__(self) -> str:
        """The URL without password, as it may be logged."""
        return self.masked()

    def _source(self) -> str:
        if self.password_env:
            return f"password from ${self.password_env}"
        if self.secret_arn:
            key = f" key {self.secret_key!r}" if self.secret_key else ""
            return f"password from secret {self.secret_arn}{key}"
        return "no password"

    def masked(self) -> str:
        """The URL as text, with ``***`` where the password will be once resolved.

        Returns:
            A string safe for logs, error messages and the lake's manifest.
        """
        if self.password_env or self.secret_arn:
            # render_as_string(hide_password=True) writes "***" for any password set.
            return self.url.set(password="placeholder").render_as_string(hide_password=True)
        return self.url.render_as_string(hide_password=True)

    def resolve(
        self, environ: Mapping[str, str] | None = None, *, secrets_client: Any = None
    ) -> URL:
        """Build the URL with the password, where it is used (on the worker).

        Args:
            environ: The environment to read ``password_env`` from (default
                ``os.environ``).
            secrets_client: A botocore ``secretsmanager`` client for ``secret_arn``
                (default: one made from the worker's own credentials and the secret's
                region).

        Returns:
            The URL with its password set; never log it (use :meth:`masked`).

        Raises:
            UsageError: If ``password_env`` is not set on this machine, or the secret does
                not hold the expected key.
            InfrastructureError: If the secret cannot be read.
        """
        if self.password_env:
            env = os.environ if environ is None else environ
            password = env.get(self.password_env)
            if not password:
                raise UsageError(
                    f"${self.password_env} is not set on this machine, so the source "
                    f"database password for {_where(self.url)} is unknown here; set it (on "
                    "Fargate: the task definition's secrets) on every process that connects"
                )
            return self.url.set(password=password)
        if self.secret_arn:
            return self.url.set(password=self._read_secret(secrets_client))
        return self.url

    def _read_secret(self, client: Any) -> str:
        assert self.secret_arn is not None
        if client is None:
            import botocore.session

            parts = self.secret_arn.split(":")
            region = parts[3] if len(parts) > 3 and parts[3] else None
            client = botocore.session.get_session().create_client(
                "secretsmanager", region_name=region
            )
        try:
            text = client.get_secret_value(SecretId=self.secret_arn)["SecretString"]
        except Exception as e:  # botocore's ClientError, or no credentials
            code = getattr(e, "response", {}).get("Error", {}).get("Code", type(e).__name__)
            raise InfrastructureError(
                f"cannot read the source database password from {self.secret_arn} ({code}); "
                "check that this machine's AWS role may read the secret "
                "(secretsmanager:GetSecretValue and kms:Decrypt on its key)"
            ) from None
        if self.secret_key is None:
            return str(text)
        try:
            value = json.loads(text)[self.secret_key]
        except (ValueError, KeyError, TypeError):
            raise UsageError(
                f"secret {self.secret_arn} is not a JSON object with a {self.secret_key!r} "
                "key (the format RDS uses); store {\"password\": ...} or pass "
                "secret_key=None for a secret that is the password itself"
            ) from None
        return str(value)


def secret_reference_from_environment(
    url: URL | str, environ: Mapping[str, str] | None = None
) -> SecretURL | None:
    """Make the reference workers get, when the password has a source outside the URL.

    The password source is, in this order, ``$PREASSIGN_SOURCE_PASSWORD_SECRET_ARN`` (a
    Secrets Manager secret the workers read with their role) or
    ``$PREASSIGN_SOURCE_PASSWORD`` (set on every process; on Fargate by the task
    definition's ``secrets``). A URL that holds its password itself gives None: the caller
    then sends the URL as before, which :func:`check_source_transport` and
    :func:`preassign.cluster.config.check_scheduler_address` keep on this machine or on TLS.

    Args:
        url: The source URL, with or without password.
        environ: The environment to read (default ``os.environ``).

    Returns:
        A :class:`SecretURL`, or None when the URL holds the password (or no source is set).

    Raises:
        UsageError: If the URL holds a password *and* a password source is set, which
            would be ambiguous.
    """
    env = os.environ if environ is None else environ
    parsed = url if isinstance(url, URL) else _parse(url)
    arn = (env.get(SOURCE_PASSWORD_SECRET_ENV) or "").strip()
    has_env = bool(env.get(SOURCE_PASSWORD_ENV))
    if parsed.password is not None:
        if arn or has_env:
            raise UsageError(
                f"the source URL holds a password and ${SOURCE_PASSWORD_ENV} or "
                f"${SOURCE_PASSWORD_SECRET_ENV} is set too; give the password one way only "
                "(the URL without password plus the variable is the way for Fargate)"
            )
        return None
    if arn:
        return SecretURL(parsed, secret_arn=arn)
    if has_env:
        return SecretURL(parsed, password_env=SOURCE_PASSWORD_ENV)
    return None
