"""Storage faults between the run and S3: retried when transient, clean when not.

Every S3 request of the run goes through :class:`faultproxy.HttpFaultProxy`, a
fault-injecting HTTP forwarder in front of the session's moto server (the lake and
the output are reached only via ``storage_options={"client_kwargs": {"endpoint_url":
proxy.url}}``). Checks of the store's state bypass the proxy.

What is checked:

* transient faults (503 SlowDown, 500 InternalError, a connection closed before the
  request is forwarded, a connection closed halfway through the answer of a request
  that took effect) on lake reads, staging writes and publishing copies are retried,
  with the product's default retry configuration, and the output equals a fault-free
  run's;
* a lost answer to the PUT that creates the output's lock is not mistaken for another
  run holding the lock;
* a read-only output location, and persistent failure of the output prefix, fail with
  an ``OSError`` naming the output, leave nothing that looks complete, and (where the
  store allows it) no staging area and no lock;
* publishing on S3 (copies, ``summary.json`` last) failing at its first copy, in the
  middle, or at ``summary.json``: before *every* write to the output, a reader would
  see either no ``summary.json`` or a ``summary.json`` together with exactly the files
  of the run it describes (checked by snapshots taken from the proxy).

Persistent-failure tests cap botocore at two attempts per request
(``config_kwargs={"retries": {"total_max_attempts": 2}}``) only to keep them fast.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import posixpath
import re
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import dask
import pytest

from preassign.lake import OutputLockedError
from preassign.pipeline import RunConfig, run_preassignment
from preassign.synth import SynthConfig, write_lake
from tests.support.faultproxy import Fault, HttpFaultProxy, live_threads
from tests.support.services import assert_runs_equal, read_run_outputs

pytestmark = [pytest.mark.s3, pytest.mark.timeout(120)]

BUCKET = "fault-tests"
CFG = SynthConfig(users=240, snacks=40, users_per_partition=80, seed=17)
DATES = (dt.date(2026, 12, 1), dt.date(2026, 12, 5))  # the "previous" output
DATES2 = (dt.date(2026, 12, 2), dt.date(2026, 12, 6))  # the run that replaces it
SEED = 20261201
FAST_FAIL = {"retries": {"mode": "standard", "total_max_attempts": 2}}


def _clear_s3fs() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@dataclasses.dataclass
class Store:
    """The module's bucket on moto, a lake in it, fault-free reference outputs."""

    endpoint: str
    fs: Any  # s3fs straight to moto, no caches: what a reader sees now
    base_run_id: str  #: of the previous output at ``base/`` (DATES)
    reference: dict[str, Any]  #: a fault-free local run (DATES2)

    @property
    def direct_options(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint, "skip_instance_cache": True,
                "use_listings_cache": False}

    def url(self, *parts: str) -> str:
        return "s3://" + "/".join([BUCKET, *parts])

    def key(self, *parts: str) -> str:
        return "/".join([BUCKET, *parts])

    def listing(self, *parts: str) -> dict[str, tuple[int, str]]:
        """Relative path -> (size, ETag) of every object under a prefix."""
        root = self.key(*parts)
        found = self.fs.find(root, detail=True)
        return {p[len(root) + 1:]: (info["size"], info.get("ETag", "")) for p, info in
                found.items()}

    def run_entries(self, name: str) -> list[str]:
        """What ``runs/`` holds for the output ``runs/<name>``: itself, its lock, staging."""
        if not self.fs.exists(self.key("runs")):
            return []
        entries = [posixpath.basename(p) for p in self.fs.ls(self.key("runs"), detail=False)]
        return sorted(e for e in entries if e == name or e.startswith(f".{name}."))

    def copy_base(self, name: str) -> dict[str, tuple[int, str]]:
        """A complete previous output (DATES) at ``runs/<name>``; returns its listing."""
        self.fs.copy(self.key("base") + "/", self.key("runs", name) + "/", recursive=True)
        listing = self.listing("runs", name)
        assert listing == self.listing("base")
        return listing


def _reset_moto(endpoint: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:  # the local moto server
        response.read()


@pytest.fixture(scope="module")
def store(moto_server, tmp_path_factory) -> Iterator[Store]:
    import s3fs

    root = tmp_path_factory.mktemp("storage-faults")
    _reset_moto(moto_server)
    _clear_s3fs()
    fs = s3fs.S3FileSystem(endpoint_url=moto_server, skip_instance_cache=True,
                           use_listings_cache=False)
    fs.mkdir(BUCKET)
    write_lake(CFG, str(root / "lake"))
    fs.put(str(root / "lake") + "/", f"{BUCKET}/lake", recursive=True)
    with dask.config.set(scheduler="sync"):
        run_preassignment(RunConfig(lake=str(root / "lake"), date_from=DATES2[0],
                                    date_to=DATES2[1], out=str(root / "reference")))
        base = run_preassignment(RunConfig(  # fault-free, straight to moto
            lake=f"s3://{BUCKET}/lake", date_from=DATES[0], date_to=DATES[1],
            out=f"s3://{BUCKET}/base", storage_options={"endpoint_url": moto_server}))
    yield Store(moto_server, fs, base.summary["run_id"], read_run_outputs(str(root / "reference")))
    _clear_s3fs()
    _reset_moto(moto_server)


@pytest.fixture
def proxy(store) -> Iterator[HttpFaultProxy]:
    with HttpFaultProxy(store.endpoint, seed=SEED) as p:
        yield p
    _clear_s3fs()  # drop the clients pointed at this proxy
    assert not list(live_threads()), f"proxy threads still running: {list(live_threads())}"
    assert not p.errors, f"the proxy failed while answering: {p.errors!r}"


def _via(proxy: HttpFaultProxy, **config: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"client_kwargs": {"endpoint_url": proxy.url}}
    if config:
        options["config_kwargs"] = config
    return options


def _run(store: Store, out: str, options: dict[str, Any], *, dates=DATES2, **kw: Any):
    return run_preassignment(RunConfig(lake=store.url("lake"), date_from=dates[0],
                                       date_to=dates[1], out=store.url("runs", out),
                                       storage_options=options, **kw))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__


class Watcher:
    """Snapshots of an output prefix taken before every write that may touch it.

    State changes only through writes, so the snapshots plus one taken at the end are
    every state a reader could have seen.
    """

    def __init__(self, store: Store, name: str):
        self.store, self.name = store, name
        self.snapshots: list[tuple[dict[str, tuple[int, str]], str | None]] = []
        self._lock = threading.Lock()
        self.prefix = f"/{BUCKET}/runs/{name}"

    def __call__(self, method: str, path: str, headers: Any, fault: str | None) -> None:
        if method in ("PUT", "POST", "DELETE") and (
                path.startswith(self.prefix + "/") or path == self.prefix or "?delete" in path):
            self.snap()

    def snap(self) -> None:
        files = self.store.listing("runs", self.name)
        run_id = None
        if "summary.json" in files:
            try:
                summary = self.store.fs.cat_file(self.store.key("runs", self.name,
                                                                "summary.json"))
                run_id = json.loads(summary)["run_id"]
            except FileNotFoundError:  # deleted between the listing and the read
                files.pop("summary.json")
        with self._lock:
            self.snapshots.append((files, run_id))

    def check(self, complete: dict[str, dict[str, tuple[int, str]]]) -> None:
        """Every snapshot with a ``summary.json`` holds exactly the files of its run."""
        self.snap()
        assert len(self.snapshots) > 3, "the watcher saw no writes"
        for i, (files, run_id) in enumerate(self.snapshots):
            if run_id is None:
                continue
            assert run_id in complete, f"snapshot {i}: summary.json of unknown run {run_id}"
            expected = complete[run_id]
            missing = sorted(set(expected) - set(files))
            extra = sorted(set(files) - set(expected))
            changed = sorted(k for k in set(files) & set(expected) if files[k] != expected[k])
            assert not (missing or extra or changed), (
                f"snapshot {i}/{len(self.snapshots)}: summary.json of run {run_id} visible "
                f"with missing {missing}, extra {extra}, changed {changed}")


def _no_leftovers(store: Store, name: str) -> None:
    entries = store.run_entries(name)
    staging = [e for e in entries if e.startswith(f".{name}.staging-")]
    assert not staging, f"staging areas left behind: {staging}"
    assert f".{name}.lock" not in entries, "the output's lock was left behind"


# --------------------------------------------------------------------------------------------
# the proxy itself


def test_fault_proxy_is_seeded_and_bounded(store):
    """Same seed and requests, same faults; ``first``/``skip``/``limit`` are exact; the
    error answers are S3's; stopping leaves no thread behind."""
    import http.client

    def faulted(seed: int) -> list[int]:
        with HttpFaultProxy(store.endpoint, seed=seed) as p:
            p.add(Fault("internal", path="never", first=0),
                  Fault("slowdown", method="HEAD", skip=1, first=2),
                  Fault("internal", method="GET", rate=0.5, limit=4))
            port = int(p.url.rsplit(":", 1)[1])
            out = []
            for i in range(24):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("HEAD" if i < 4 else "GET", f"/{BUCKET}?list-type=2")
                response = conn.getresponse()
                body = response.read()
                conn.close()
                out.append(response.status)
                if response.status == 500:
                    assert b"<Code>InternalError</Code>" in body
            assert [r.status for r in p.log] == out
        return out

    first = faulted(7)
    assert first[:4] == [200, 503, 503, 200]
    assert first.count(500) == 4
    assert faulted(7) == first
    assert not list(live_threads())


# --------------------------------------------------------------------------------------------
# transient faults are retried


#: Which fault each class of request gets; the two plans give every kind to two classes.
PLANS = {
    "throttled-reads": {"read": "slowdown", "stage": "internal", "copy": "drop-response",
                        "delete": "drop-request", "other": "drop-response"},
    "dropped-reads": {"read": "drop-response", "stage": "drop-request", "copy": "slowdown",
                      "delete": "internal", "other": "slowdown"},
}


@pytest.mark.parametrize("plan", list(PLANS))
def test_transient_faults_are_retried(store, proxy, plan):
    kinds = PLANS[plan]
    name = f"transient-{plan}"
    base_files = store.copy_base(name)  # a previous output, replaced with --overwrite
    watcher = Watcher(store, name)
    proxy.observe(watcher)
    rules = proxy.add(
        Fault("deny", path=r"\.lock$", first=0),  # never: see test_lost_answer_to_the_lock_put
        Fault(kinds["read"], method="GET", path=rf"^/{BUCKET}/lake/.*\.parquet", first=1),
        Fault(kinds["stage"], method="PUT", path=r"/runs/\.[^/]+\.staging-", first=1),
        Fault(kinds["copy"], method="PUT", header=("x-amz-copy-source", "."), first=1),
        Fault(kinds["delete"], method="POST|DELETE", first=1),  # the old output, the staging
        Fault(kinds["other"], rate=0.03, limit=1),  # any other request, seeded
    )
    with dask.config.set(scheduler="sync"):  # a deterministic request order: same faults
        result = _run(store, name, _via(proxy), overwrite=True)
    assert [r.injected for r in rules[1:5]] == [1, 1, 1, 1], [r.injected for r in rules]
    assert_runs_equal(read_run_outputs(store.url("runs", name), store.direct_options),
                      store.reference)
    watcher.check({store.base_run_id: base_files,
                   result.summary["run_id"]: store.listing("runs", name)})
    _no_leftovers(store, name)


def test_lost_answer_to_the_lock_put_is_not_a_lock_conflict(store, proxy):
    """The lock is created with a conditional PUT (If-None-Match: *). If that PUT takes
    effect but its answer is lost, the client retries and gets 412: the run must see
    its own lock (its run id is in it), not another run's."""
    name = "lost-lock-answer"
    (rule,) = proxy.add(Fault("drop-response", method="PUT", path=rf"/runs/\.{name}\.lock$",
                              first=1))
    with dask.config.set(scheduler="sync"):
        _run(store, name, _via(proxy))
    assert rule.injected == 1
    assert_runs_equal(read_run_outputs(store.url("runs", name), store.direct_options),
                      store.reference)
    _no_leftovers(store, name)


# --------------------------------------------------------------------------------------------
# faults that do not go away


def test_read_only_output_location_fails_cleanly(store, proxy):
    name = "read-only"
    proxy.add(*Fault.under("deny", BUCKET, "runs/", method="PUT|POST|DELETE"))
    with pytest.raises(OSError) as info:
        _run(store, name, _via(proxy))
    assert not isinstance(info.value, OutputLockedError), info.value
    assert proxy.faults(), "nothing was denied"
    assert store.run_entries(name) == []  # nothing written: no output, staging or lock
    message = str(info.value)
    assert store.url("runs", name) in message, \
        f"the error does not say which output cannot be written: {message!r}"


def test_local_output_under_a_file_fails_cleanly(tmp_path):
    """Root ignores file modes, so a read-only local output is a path under a file."""
    (tmp_path / "plain-file").write_text("not a directory\n")
    out = tmp_path / "plain-file" / "run"
    lake = tmp_path / "lake"
    write_lake(SynthConfig(users=20, snacks=10, users_per_partition=20, seed=1), str(lake))
    with dask.config.set(scheduler="sync"), pytest.raises(OSError) as info:
        run_preassignment(RunConfig(lake=str(lake), date_from=DATES[0], date_to=DATES[1],
                                    out=str(out)))
    assert not isinstance(info.value, OutputLockedError)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lake.lock", "lake", "plain-file"]
    assert (tmp_path / "plain-file").read_text() == "not a directory\n"
    assert str(out) in str(info.value), \
        f"the error does not name the output: {info.value!r}"


def test_output_failing_at_publish_fails_cleanly(store, proxy):
    """The output's own prefix fails for good once the outputs are staged: the publish
    fails with an error naming the output; the staging area and the lock (elsewhere)
    are removed."""
    name = "fails-at-publish"
    armed: list[Fault] = []

    def arm(stage: str, _seconds: float) -> None:
        if stage == "assign":
            armed.extend(proxy.add(*Fault.under("internal", BUCKET, f"runs/{name}")))

    with dask.config.set(scheduler="sync"), pytest.raises(OSError) as info:
        run_preassignment(RunConfig(lake=store.url("lake"), date_from=DATES2[0],
                                    date_to=DATES2[1], out=store.url("runs", name),
                                    storage_options=_via(proxy, **FAST_FAIL)), on_stage=arm)
    assert sum(r.injected for r in armed) >= 1
    proxy.clear()
    assert not store.fs.exists(store.key("runs", name, "summary.json"))
    _no_leftovers(store, name)
    assert store.url("runs", name) in str(info.value), \
        f"the error does not say which output failed: {info.value!r}"


def test_storage_outage_mid_run_reports_the_first_failure(store, proxy, caplog):
    """Everything under runs/ fails once the lake is read: the staging writes fail, and so
    do the clean-ups. The error raised must be the write's, not the lock removal's; the
    lock left behind is named in a warning, and the next run is refused until it is
    deleted."""
    name = "outage"
    armed: list[Fault] = []

    def arm(stage: str, _seconds: float) -> None:
        if stage == "read":
            armed.extend(proxy.add(*Fault.under("internal", BUCKET, "runs/")))

    caplog.set_level(logging.WARNING)
    with dask.config.set(scheduler="sync"), pytest.raises(OSError) as info:
        run_preassignment(RunConfig(lake=store.url("lake"), date_from=DATES2[0],
                                    date_to=DATES2[1], out=store.url("runs", name),
                                    storage_options=_via(proxy, **FAST_FAIL)), on_stage=arm)
    proxy.clear()
    operations = [re.findall(r"calling the (\w+) operation", str(e)) for e in
                  _chain(info.value)]
    flat = [op for ops in operations for op in ops]
    assert "PutObject" in flat and "DeleteObjects" not in flat, \
        f"the error is not the failed write (chain: {flat}): {info.value!r}"
    assert not any(e.startswith(f".{name}.staging-") for e in store.run_entries(name))
    assert not store.fs.exists(store.key("runs", name, "summary.json"))
    lock = f".{name}.lock"
    assert lock in store.run_entries(name)  # the store was down: it could not be removed
    assert any(lock in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING), \
        "no warning names the lock left behind"
    with pytest.raises(OutputLockedError, match="delete the lock"):
        _run(store, name, _via(proxy))
    store.fs.rm(store.key("runs", lock))
    with dask.config.set(scheduler="sync"):
        _run(store, name, _via(proxy))
    assert_runs_equal(read_run_outputs(store.url("runs", name), store.direct_options),
                      store.reference)


# --------------------------------------------------------------------------------------------
# publishing on S3 failing part-way


@pytest.mark.parametrize("point", ["first-copy", "middle-copy", "summary-copy"])
def test_failed_publish_never_shows_an_incomplete_output(store, proxy, point):
    name = f"publish-{point}"
    base_files = store.copy_base(name)
    watcher = Watcher(store, name)
    proxy.observe(watcher)
    copy = ("x-amz-copy-source", ".")
    into = rf"^/{BUCKET}/runs/{name}/"
    rule = {
        "first-copy": Fault("deny", method="PUT", path=into, header=copy, first=1),
        "middle-copy": Fault("deny", method="PUT", path=into, header=copy, skip=3, first=1),
        "summary-copy": Fault("deny", method="PUT", path=into + "summary\\.json$", header=copy,
                              first=1),
    }[point]
    proxy.add(rule)
    with dask.config.set(scheduler="sync"), pytest.raises(OSError) as info:
        _run(store, name, _via(proxy), overwrite=True)
    assert rule.injected == 1
    proxy.clear()
    watcher.check({store.base_run_id: base_files})
    _no_leftovers(store, name)
    after = store.listing("runs", name)
    # the previous output is either still whole, or no longer looks complete
    assert after == base_files or "summary.json" not in after, sorted(after)
    assert isinstance(info.value, PermissionError) or any(
        isinstance(e, PermissionError) for e in _chain(info.value))
    if point != "summary-copy":
        return
    # a re-run publishes (nothing complete is there, so no --overwrite needed)
    with dask.config.set(scheduler="sync"):
        result = _run(store, name, _via(proxy), overwrite=after == base_files)
    assert_runs_equal(read_run_outputs(store.url("runs", name), store.direct_options),
                      store.reference)
    watcher.check({store.base_run_id: base_files,
                   result.summary["run_id"]: store.listing("runs", name)})
