"""Storage: the one way to open a location (local or ``s3://``) and to publish to it.

Design
------
:func:`open_location` turns a URL and fsspec ``storage_options`` into a
:class:`Location`: its filesystem and a normalised absolute path (symlinks resolved
locally, no trailing slash), so that two locations can be compared - the basis of the
rule that nothing a user owns is ever overwritten:

* a writer's target must not be, contain or lie inside a location it must protect (the
  lake a run reads, the lake's table directories), nor lie inside any other lake;
* a target that exists must be a directory, and either empty or recognisably written
  by preassign (:meth:`Publication.owns`); ``overwrite`` replaces only a *complete*
  one of those, never anything else.

:class:`Publication` is the publish protocol shared by run outputs and synthetic
lakes: everything is written to a staging place next to the target, under a lock next
to it (``flock`` locally, a conditional ``If-None-Match`` object on object stores),
then made visible at once - one directory rename locally; on object stores, which have
no rename, the data files are copied first and the file that marks completeness
(``summary.json``, ``_lake.json``) last. Lake versions written by ``extract`` use the
same locations and checks with a pointer file (``_CURRENT``) written last instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import posixpath
import re
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InfrastructureError, InputError, UsageError

__all__ = [
    "LAKE_MARKERS",
    "Location",
    "OutputError",
    "OutputExistsError",
    "OutputLockedError",
    "Publication",
    "RunOutput",
    "SynthLake",
    "VersionedLake",
    "enclosing_lake",
    "open_location",
    "parse_storage_options",
    "refuse_overlap",
]

log = logging.getLogger(__name__)

#: Files that mark a directory as a lake root (a manifest, or a version pointer).
LAKE_MARKERS = ("_lake.json", "_CURRENT")


class OutputExistsError(InputError):
    """The target already holds a complete result and ``overwrite`` is off (exit 1)."""


class OutputLockedError(OutputExistsError):
    """Another process is writing to the same target."""


class OutputError(InfrastructureError, OSError):
    """The target could not be written (storage failure, permissions; exit 3).

    The storage's own error is chained as the cause.
    """


def _join(*parts: str) -> str:
    return posixpath.join(*[p.rstrip("/") if i == 0 else p.strip("/") for i, p in enumerate(parts)])


@dataclasses.dataclass(frozen=True)
class Location:
    """A place on a filesystem: the URL as given, its filesystem and normalised path."""

    url: str
    fs: Any
    path: str
    scheme: str
    storage_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def local(self) -> bool:
        """Whether this is the local filesystem (rename is atomic, flock works)."""
        return self.scheme == "file"

    @property
    def parent(self) -> str:
        """Path of the containing directory."""
        return posixpath.dirname(self.path)

    @property
    def name(self) -> str:
        """Last path component."""
        return posixpath.basename(self.path)

    def child(self, *parts: str) -> str:
        """Path of something under this location."""
        return _join(self.path, *parts)

    def url_of(self, path: str) -> str:
        """A path of this filesystem as a URL Dask and fsspec can open."""
        return path if self.local else f"{self.scheme}://{path}"

    def contains(self, other: Location) -> bool:
        """Whether ``other`` is this location or lies inside it (same filesystem)."""
        if self.scheme != other.scheme:
            return False
        if self.path == other.path or self.path == "/":
            return True
        return other.path.startswith(self.path + "/")

    def status(self) -> str:
        """``"missing"``, ``"dir"`` or ``"file"`` (anything else that exists)."""
        if self.local:
            if os.path.isdir(self.path):
                return "dir"
            return "file" if os.path.lexists(self.path) else "missing"
        if self.fs.isfile(self.path):
            return "file"
        return "dir" if self.fs.isdir(self.path) else "missing"

    def names(self) -> list[str]:
        """Names of the entries directly under this directory, sorted."""
        if self.local:
            return sorted(os.listdir(self.path))
        try:
            entries = self.fs.ls(self.path, detail=False)
        except FileNotFoundError:
            return []
        return sorted({posixpath.basename(p.rstrip("/")) for p in entries} - {""})


#: ``storage_options`` keys that hold credentials: refused on the command line.
SECRET_OPTIONS = frozenset({"key", "secret", "token", "aws_access_key_id",
                            "aws_secret_access_key", "aws_session_token"})


def parse_storage_options(items: Iterable[str],
                          environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (the CLI's ``--storage-option``) -> fsspec ``storage_options``.

    ``endpoint_url`` goes where s3fs wants it (``client_kwargs``); ``true``/``false``
    become booleans. Without an endpoint given, ``AWS_ENDPOINT_URL_S3`` or
    ``AWS_ENDPOINT_URL`` from ``environ`` (default: the process environment) is used, as
    the AWS tools do. Credentials are never taken here: they come from the AWS chain.

    Raises:
        UsageError: a pair without ``=``, or a credential key.

    Examples:
        >>> parse_storage_options(["endpoint_url=http://127.0.0.1:9000", "anon=false"], {})
        {'client_kwargs': {'endpoint_url': 'http://127.0.0.1:9000'}, 'anon': False}
    """
    opts: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--storage-option: expected KEY=VALUE, got {item!r}")
        if key in SECRET_OPTIONS:
            raise UsageError(
                f"--storage-option: {key!r} is a secret: use the AWS credential chain "
                "(environment, profile, instance or task role) instead of the command line")
        if key == "endpoint_url":
            opts.setdefault("client_kwargs", {})["endpoint_url"] = value
            continue
        opts[key] = value.lower() == "true" if value.lower() in ("true", "false") else value
    environ = os.environ if environ is None else environ
    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if endpoint and "endpoint_url" not in opts.get("client_kwargs", {}):
        opts.setdefault("client_kwargs", {})["endpoint_url"] = endpoint
    return opts


def open_location(url: str, storage_options: Mapping[str, Any] | None = None, *,
                  flag: str = "location") -> Location:
    """Open ``url`` (a local path or an fsspec URL such as ``s3://bucket/prefix``).

    Raises:
        UsageError: the URL names no usable filesystem (an unknown protocol, a missing
            package for it).
    """
    options = dict(storage_options or {})
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as exc:
        raise UsageError(f"{flag} {url!r} cannot be opened: {exc}") from exc
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        scheme, path = "file", os.path.realpath(path)
    else:
        scheme = "s3" if protocol in ("s3", "s3a") else protocol
        path = path.rstrip("/")
    return Location(url, fs, path or "/", scheme, options)


def _looks_like_lake(loc: Location, path: str) -> bool:
    """A lake root: a manifest or version pointer, or both a users and a snacks table."""
    fs = loc.fs
    if loc.local:
        if any(os.path.isfile(os.path.join(path, m)) for m in LAKE_MARKERS):
            return True
        return all(os.path.isdir(os.path.join(path, t)) for t in ("users", "snacks"))
    if any(fs.isfile(_join(path, m)) for m in LAKE_MARKERS):
        return True
    return all(fs.isdir(_join(path, t)) for t in ("users", "snacks"))


def enclosing_lake(loc: Location) -> str | None:
    """The URL of a lake that ``loc`` lies inside (not ``loc`` itself), or None."""
    path = loc.path
    while True:
        parent = posixpath.dirname(path)
        if parent in ("", path) or (loc.local and parent == "/"):
            return None
        try:
            if _looks_like_lake(loc, parent):
                return loc.url_of(parent)
        except OSError:  # a parent we may not list (permissions): not a lake of ours
            pass
        path = parent


def refuse_overlap(target: Location, target_flag: str, protected: Location,
                   protected_flag: str) -> None:
    """Refuse a target that is, contains or lies inside a protected location.

    Raises:
        UsageError: naming both locations.
    """
    if target.contains(protected):
        how = "is" if target.path == protected.path else "contains"
    elif protected.contains(target):
        how = "lies inside"
    else:
        return
    raise UsageError(
        f"{target_flag} {target.url!r} {how} {protected_flag} {protected.url!r}; writing there "
        f"would destroy or pollute it. Choose a {target_flag} outside it"
    )


class _Target:
    """A location something is published to, with a lock next to it."""

    #: what the target is, for messages
    what = "output"
    #: the option naming the target, for messages
    flag = "--out"
    #: an object-store lock older than this is taken to be left by a dead process
    stale_lock_seconds = 6 * 3600

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None,
                 run_id: str | None = None):
        self.url = url
        self.location = open_location(url, storage_options, flag=self.flag)
        self.storage_options = dict(self.location.storage_options)
        self.fs = self.location.fs
        self.path = self.location.path
        self.protocol = self.location.scheme
        self.local = self.location.local
        self.run_id = run_id or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + \
            "-" + uuid.uuid4().hex[:8]
        self._lock_fd: int | None = None

    @property
    def lock_path(self) -> str:
        """The lock file next to the target."""
        return _join(self.location.parent, f".{self.location.name}.lock")

    def _check_place(self, protect: Iterable[tuple[str, Location]]) -> str:
        """The checks every target shares; returns the target's status."""
        loc = self.location
        if loc.path == "/" or (not loc.local and "/" not in loc.path):
            raise UsageError(f"{self.flag} {self.url!r} is the root of its filesystem or "
                             "bucket; give a directory (prefix) below it")
        for label, protected in protect:
            refuse_overlap(loc, self.flag, protected, label)
        lake = enclosing_lake(loc)
        if lake is not None:
            raise UsageError(
                f"{self.flag} {self.url!r} lies inside the lake {lake!r}; its files would be "
                f"read as lake data. Choose a {self.flag} outside every lake")
        status = loc.status()
        if status == "file":
            raise UsageError(
                f"{self.flag} {self.url!r} is an existing file, not a directory; preassign "
                "never replaces it. Choose another location")
        return status

    # ----------------------------------------------------------------------------------------
    # the lock

    def acquire(self) -> None:
        """Take the target's lock, so that two processes cannot both publish to it.

        Locally an ``flock`` (released by the OS if the process dies); on object stores
        a lock object created only if absent (``If-None-Match: *``), stale after
        :attr:`stale_lock_seconds`.

        Raises:
            OutputLockedError: another process holds the lock.
        """
        with self._failing(f"taking the lock {self.lock_path} of {self.what}"):
            self._acquire()

    def _acquire(self) -> None:
        holder = f"{self.run_id} pid={os.getpid()} host={socket.gethostname()}"
        if self.local:
            import fcntl

            os.makedirs(posixpath.dirname(self.lock_path) or ".", exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputLockedError(
                    f"another run is writing to {self.url!r} (lock {self.lock_path}); "
                    "wait for it to finish"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, holder.encode())
            self._lock_fd = fd
            return
        for attempt in range(2):
            try:
                with self.fs.open(self.lock_path, "xb") as f:
                    f.write(f"{holder} at={time.time():.0f}".encode())
                self._lock_fd = -1
                return
            except FileExistsError:
                text = self.fs.cat_file(self.lock_path).decode(errors="replace")
                if text.startswith(f"{holder} at="):
                    # our own PUT took effect but its answer was lost; the retry got 412
                    self._lock_fd = -1
                    return
                at = float(text.rsplit("at=", 1)[-1]) if "at=" in text else 0.0
                if attempt == 0 and time.time() - at > self.stale_lock_seconds:
                    log.warning("removing stale lock %s (%s)", self.lock_path, text)
                    self.fs.rm(self.lock_path)
                    continue
                raise OutputLockedError(
                    f"another run is writing to {self.url!r} (lock {self.lock_path}: {text}); "
                    "wait for it, or delete the lock if that run is dead"
                ) from None

    def release(self) -> None:
        """Release the lock taken by :meth:`acquire` (idempotent)."""
        fd = self._lock_fd
        if fd is None:
            return
        self._lock_fd = None
        if fd >= 0:
            os.close(fd)
            return
        try:
            self.fs.rm(self.lock_path)
        except FileNotFoundError:  # pragma: no cover
            pass
        except OSError as exc:  # never hide the run's own error, or fail a published run
            log.warning("could not remove the lock %s of %s (%s); delete it, or the next "
                        "writer to %s will be refused", self.lock_path, self.url, exc, self.url)

    @contextlib.contextmanager
    def _failing(self, doing: str) -> Iterator[None]:
        """Name the target (and what was being done) in storage errors."""
        try:
            yield
        except (OutputExistsError, OutputError, UsageError):
            raise
        except OSError as exc:
            raise OutputError(f"{doing} {self.url!r} failed: {exc}") from exc

class Publication(_Target):
    """A target written through a staging place and published at once at the end.

    Subclasses say which file marks a complete result (:attr:`last`), which names a
    result of theirs holds (:attr:`layout`) and how to recognise their own complete
    result (:meth:`owns_complete`).
    """

    #: the file written last: its presence means the result is complete
    last = "summary.json"
    #: top-level names a result of this kind holds (an interrupted object-store publish
    #: leaves a subset of them, which is recognisably ours)
    layout: frozenset[str] = frozenset()
    #: what a complete result is called, for messages
    result = "run"

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None, *,
                 overwrite: bool = False, run_id: str | None = None):
        super().__init__(url, storage_options, run_id)
        self.overwrite = overwrite
        self.staging = _join(self.location.parent,
                             f".{self.location.name}.staging-{self.run_id}")

    # ----------------------------------------------------------------------------------------
    # what is there

    def is_complete(self) -> bool:
        """Whether the target holds a complete result (its :attr:`last` file)."""
        return self.fs.isfile(_join(self.path, self.last))

    def owns_complete(self) -> bool:
        """Whether the complete result at the target was written by preassign."""
        try:
            payload = json.loads(self.fs.cat_file(_join(self.path, self.last)))
        except (OSError, ValueError):
            return False
        return self._recognise(payload)

    def _recognise(self, payload: Any) -> bool:
        return isinstance(payload, dict) and "run_id" in payload and "parameters" in payload

    def check_target(self, protect: Iterable[tuple[str, Location]] = ()) -> None:
        """Refuse a target that would destroy or pollute something the user owns.

        Args:
            protect: ``(label, location)`` pairs the target must not be, contain or lie in.

        Raises:
            UsageError: the target is a filesystem or bucket root, overlaps a protected
                location, lies inside a lake, is not a directory, or is a directory holding
                something preassign did not write.
            OutputExistsError: it holds a complete result and ``overwrite`` is off.
        """
        loc = self.location
        with self._failing(f"checking {self.what}"):
            if self._check_place(protect) == "missing":
                return
            names = [n for n in loc.names() if n not in (".", "..")]
            if not names:
                return
            if self.last in names and self.owns_complete():
                if not self.overwrite:
                    raise OutputExistsError(
                        f"{self.what} {self.url!r} already holds a complete {self.result} "
                        f"({self.last}); pass --overwrite to replace it, or choose another "
                        f"{self.flag}")
                return
            if self.last not in names and set(names) <= self.layout:
                return  # left by an interrupted publish of ours: nothing complete is there
            foreign = [n for n in names if n not in self.layout] or names
            raise UsageError(
                f"{self.flag} {self.url!r} is a directory holding files preassign did not "
                f"write (e.g. {foreign[0]!r}); preassign only replaces an empty directory or "
                f"a complete {self.what} of its own (with --overwrite). Choose a new or empty "
                "location")

    # ----------------------------------------------------------------------------------------
    # staging

    def staging_url(self, *parts: str) -> str:
        """URL of a path inside the staging area."""
        return self.location.url_of(_join(self.staging, *parts) if parts else self.staging)

    def write_json(self, relpath: str, payload: Any) -> None:
        """Write a JSON document into the staging area."""
        path = _join(self.staging, relpath)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with self.fs.open(path, "w") as f:
            json.dump(payload, f, indent=2, default=str)
            f.write("\n")

    def write_bytes(self, relpath: str, data: bytes) -> None:
        """Write a file into the staging area."""
        path = _join(self.staging, relpath)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with self.fs.open(path, "wb") as f:
            f.write(data)

    def write_frame(self, relpath: str, frame: pd.DataFrame,
                    schema: pa.Schema | None = None) -> None:
        """Write a small pandas frame as one Parquet file into the staging area."""
        path = _join(self.staging, relpath)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
        with self.fs.open(path, "wb") as f:
            pq.write_table(table, f)

    # ----------------------------------------------------------------------------------------
    # publishing

    def publish(self) -> None:
        """Make the staged result the target's; :attr:`last` must already be staged."""
        with self._failing(f"publishing the {self.what} to"):
            self.check_target()
            if self.local:
                self._publish_local()
            else:
                self._publish_object_store()

    def _publish_local(self) -> None:
        old = None
        if os.path.lexists(self.path):
            old = _join(self.location.parent, f".{self.location.name}.old-{self.run_id}")
            os.rename(self.path, old)
        try:
            os.rename(self.staging, self.path)
        except OSError:
            if old is not None and not os.path.exists(self.path):
                os.rename(old, self.path)
            raise
        if old is not None:
            self.fs.rm(old, recursive=True)

    def _publish_object_store(self) -> None:
        last = _join(self.path, self.last)
        if self.fs.exists(self.path):
            if self.fs.isfile(last):
                self.fs.rm(last)  # from here on the old result no longer looks complete
            for entry in self.fs.ls(self.path, detail=False):
                self.fs.rm(entry, recursive=True)
        files = [f for f in self.fs.find(self.staging) if not f.endswith("/" + self.last)]
        for src in files:
            self.fs.copy(src, _join(self.path, src[len(self.staging) + 1:]))
        self.fs.copy(_join(self.staging, self.last), last)
        self.discard()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the target's lock while the body stages the result; publish it at the end.

        On any failure (of the body or of publishing) the staging area is discarded; the
        lock is released either way.
        """
        self.acquire()
        try:
            yield
            self.publish()
        except BaseException:
            self.discard()
            raise
        finally:
            self.release()

    def discard(self) -> None:
        """Remove the staging area (after a failure, or after publishing)."""
        try:
            if self.fs.exists(self.staging):
                self.fs.rm(self.staging, recursive=True)
        except OSError:  # pragma: no cover - best effort
            log.warning("could not remove staging area %s", self.staging)


class RunOutput(Publication):
    """A run's output location (SPEC §4): ``summary.json`` is written last."""

    last = "summary.json"
    layout = frozenset({"assignments", "demand", "shortage", "reservations", "snack_prior",
                        "rejected", "report.html", "summary.json", "shortage.csv",
                        "reservations.csv", "diff.json", "stock_cutoffs"})
    what = "output"
    flag = "--out"

    def check_writable(self, protect: Sequence[tuple[str, Location]] = ()) -> None:
        """Alias of :meth:`check_target` (the name the pipeline has always used)."""
        self.check_target(protect)


class ManifestLake(Publication):
    """A lake preassign writes whole: ``_lake.json`` last, its ``source`` names the writer."""

    last = "_lake.json"
    layout = frozenset()  # a lake without its manifest is indistinguishable from a user's
    what = "lake"
    #: the key of the manifest's ``source`` that says which command wrote it
    source = ""

    def _recognise(self, payload: Any) -> bool:
        return (isinstance(payload, dict) and payload.get("format") == "preassign-lake"
                and isinstance(payload.get("source"), dict) and self.source in payload["source"])


class SynthLake(ManifestLake):
    """A synthetic lake written by ``preassign synth --out``."""

    source = "synth"
    flag = "--out"
    result = "synthetic lake"


class VersionedLake(_Target):
    """A lake root ``extract`` publishes versions to, with a pointer to the current one.

    Versions are ``v-<time>-<id>/`` directories; the ``_CURRENT`` pointer is written last
    (an atomic rename locally, one PUT on S3).

    Readers (:class:`preassign.lake.Lake`) follow the pointer, so they see the old version
    or the new one, never a mix. Only directories named like a version are ever deleted.
    """

    what = "lake"
    flag = "--lake"
    #: the file naming the current version
    pointer = "_CURRENT"
    #: a version directory's name: ``v-<UTC time to the microsecond>-<8 hex digits>``
    version_name = re.compile(r"^v-\d{8}T\d{12}Z-[0-9a-f]{8}$")
    #: names of a lake that is not versioned (it would be mixed with versions)
    unversioned = frozenset({"_lake.json", "snacks", "users", "ratings", "deliveries",
                             "ng_snacks", "avoid_ingredients", "genre_prefs", "requests",
                             "stock"})

    def check_target(self, protect: Iterable[tuple[str, Location]] = ()) -> None:
        """Refuse a lake location whose contents preassign did not write.

        The location must be missing, empty, or hold a versioned lake of ours (the
        pointer, or only version directories left by earlier extractions).

        Raises:
            UsageError: naming the location and what is in the way.
        """
        with self._failing(f"checking {self.what}"):
            if self._check_place(protect) == "missing":
                return
            names = self.location.names()
        if self.pointer in names:
            return
        foreign = [n for n in names if not (self.version_name.match(n)
                                            or n.startswith(f".{self.pointer}.tmp-"))]
        if not foreign:
            return
        clash = sorted(set(names) & self.unversioned)
        if clash:
            raise UsageError(
                f"--lake {self.url!r} holds a lake that is not versioned (found "
                f"{', '.join(clash)} at its root, e.g. written by `preassign synth`); "
                "extract into a new location, or delete what is there first"
            )
        raise UsageError(
            f"--lake {self.url!r} is a directory holding files preassign did not write (e.g. "
            f"{foreign[0]!r}); extract into a new or empty location, or into a lake an "
            "earlier extraction wrote"
        )

    def child_url(self, *parts: str) -> str:
        """URL of something under the lake root."""
        return self.location.url_of(self.location.child(*parts))

    def current(self) -> str | None:
        """The version ``_CURRENT`` names, or None."""
        pointer = self.location.child(self.pointer)
        if not self.fs.isfile(pointer):
            return None
        return self.fs.cat_file(pointer).decode().strip() or None

    def versions(self) -> list[str]:
        """Version directories under the root, oldest first."""
        if not self.fs.isdir(self.path):
            return []
        return sorted(n for n in self.location.names() if self.version_name.match(n))

    def new_version(self) -> str:
        """A fresh version name (later versions sort after earlier ones)."""
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        return f"v-{stamp}-{uuid.uuid4().hex[:8]}"

    def publish(self, version: str) -> None:
        """Point ``_CURRENT`` at ``version`` (atomic rename locally, one PUT on S3)."""
        data = (version + "\n").encode()
        pointer = self.location.child(self.pointer)
        with self._failing(f"publishing version {version} of"):
            if self.local:
                tmp = self.location.child(f".{self.pointer}.tmp-{uuid.uuid4().hex[:8]}")
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, pointer)
            else:
                self.fs.pipe_file(pointer, data)

    def discard(self, version: str) -> None:
        """Remove an unpublished version, best effort.

        A task still running elsewhere may write after this; such a directory is never
        named by ``_CURRENT`` and a later extraction prunes it.
        """
        path = self.location.child(version)
        for attempt in range(3):
            try:
                if self.fs.exists(path):
                    self.fs.rm(path, recursive=True)
                return
            except OSError:
                time.sleep(0.2 * (attempt + 1))
        log.warning("could not remove the unfinished version %s; a later extraction will",
                    self.child_url(version))

    def is_complete(self, version: str) -> bool:
        """Whether a version holds its manifest (written last by the extraction)."""
        return self.fs.isfile(self.location.child(version, "_lake.json"))

    def prune(self, current: str, previous: str | None) -> list[str]:
        """Delete the versions older than ``previous``, and unfinished ones older than ``current``.

        Unfinished versions are left by failed or killed extractions: never published.
        """
        removed = []
        for name in self.versions():
            if name in (current, previous) or name > current:
                continue
            if (previous is not None and name < previous) or not self.is_complete(name):
                self.fs.rm(self.location.child(name), recursive=True)
                removed.append(name)
        return removed
