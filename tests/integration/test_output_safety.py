"""Nothing a user owns is ever deleted or replaced: the output-path rules of every writer.

``run --out``, ``synth --out`` and ``extract --lake`` (and ``run --extract``) must refuse,
with a usage error (exit 2) that names both places, any target that is, contains or lies
inside the lake or one of its tables, that lies inside another lake, that is an existing
file, or that is a directory holding something preassign did not write. ``--overwrite``
replaces only a complete result of preassign. Every case checks that the lake (a hash of
every file) and the thing in the way are unchanged, and that nothing was published.
Locally and on S3 (moto).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os

import dask
import pytest
from click.testing import CliRunner

from preassign.cli import main
from preassign.errors import UsageError
from preassign.extract import extract_lake
from preassign.pipeline import RunConfig, run_preassignment
from preassign.source import create_engine_from_url, load_synthetic
from preassign.storage import OutputExistsError
from preassign.synth import SynthConfig, write_lake
from tests.oracle.reference import worked_example_tables
from tests.support.lakes import write_tables

DATE = "2026-12-01"
SMALL = SynthConfig(users=30, snacks=12, users_per_partition=15, seed=3)


def tree_hash(path: str) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``path`` (symlinks followed)."""
    out = {}
    for root, _dirs, files in os.walk(path, followlinks=True):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def s3_hash(fs, prefix: str) -> dict[str, str]:
    return {p: hashlib.sha256(fs.cat_file(p)).hexdigest() for p in fs.find(prefix)}


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def lake(tmp_path):
    return write_tables(worked_example_tables(), str(tmp_path / "lake"))


def _run(runner, lake, out, *extra, storage=()):
    args = ["run", "--lake", lake, "--date", DATE, "--out", out, "--workers", "1", "--silent",
            "--loglevel", "WARNING", *extra]
    for opt in storage:
        args += ["--storage-option", opt]
    return runner.invoke(main, args)


def _refused(result, *names):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())  # click wraps long messages
    for name in names:
        assert name in text, (name, result.output)


# --------------------------------------------------------------------------------------------
# run --out, locally


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize(
    "where, how",
    [
        ("{lake}", "is"),
        ("{lake}/", "is"),
        ("{lake}/../lake", "is"),
        ("{lake}/out", "lies inside"),
        ("{lake}/users", "lies inside"),
        ("{lake}/ratings/run", "lies inside"),
        ("{tmp}", "contains"),
    ],
    ids=["lake", "lake-slash", "lake-dotdot", "inside-root", "table-dir", "inside-table",
         "parent"],
)
def test_run_refuses_an_output_overlapping_the_lake(runner, lake, tmp_path, where, how,
                                                    overwrite):
    before = tree_hash(str(tmp_path))
    out = where.format(lake=lake, tmp=tmp_path)
    result = _run(runner, lake, out, *(["--overwrite"] if overwrite else []))
    _refused(result, repr(out), repr(lake), how)
    assert tree_hash(str(tmp_path)) == before
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_run_refuses_a_symlink_to_the_lake_and_a_table_linked_from_elsewhere(runner, tmp_path):
    data = write_tables(worked_example_tables(), str(tmp_path / "data"))
    lake = tmp_path / "lake"
    lake.mkdir()
    for name in os.listdir(data):  # every table directory is a link into data/
        os.symlink(os.path.join(data, name), lake / name)
    os.symlink(lake, tmp_path / "alias")
    before = tree_hash(str(tmp_path))
    _refused(_run(runner, str(lake), str(tmp_path / "alias"), "--overwrite"), "is")
    _refused(_run(runner, str(lake), os.path.join(data, "users"), "--overwrite"),
             "table 'users' of the lake")
    _refused(_run(runner, str(lake), os.path.join(data, "ratings", "x")), "lies inside")
    assert tree_hash(str(tmp_path)) == before


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_run_refuses_an_existing_file(runner, lake, tmp_path, overwrite):
    target = tmp_path / "report.txt"
    target.write_text("my notes\n")
    result = _run(runner, lake, str(target), *(["--overwrite"] if overwrite else []))
    _refused(result, repr(str(target)), "existing file")
    assert target.read_text() == "my notes\n"


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_run_refuses_a_directory_of_other_files(runner, lake, tmp_path, overwrite):
    target = tmp_path / "mine"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "keep.csv").write_text("a,b\n")
    (target / "demand").mkdir()  # one of our names does not make the rest ours
    before = tree_hash(str(target))
    result = _run(runner, lake, str(target), *(["--overwrite"] if overwrite else []))
    _refused(result, repr(str(target)), "'sub'", "did not write")
    assert tree_hash(str(target)) == before


def test_run_refuses_a_summary_json_that_is_not_ours(runner, lake, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "summary.json").write_text('{"my": "summary"}\n')
    _refused(_run(runner, lake, str(target), "--overwrite"), "did not write")
    assert (target / "summary.json").read_text() == '{"my": "summary"}\n'


def test_run_refuses_an_output_inside_another_lake(runner, lake, tmp_path):
    other = write_tables(worked_example_tables(), str(tmp_path / "other"))
    before = tree_hash(other)
    _refused(_run(runner, lake, os.path.join(other, "runs", "today")), "inside the lake",
             repr(other))
    assert tree_hash(other) == before


def test_run_writes_into_an_empty_directory_and_overwrites_only_its_own(runner, lake, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with dask.config.set(scheduler="sync"):
        config = RunConfig(lake=lake, date_from=dt.date(2026, 12, 1),
                           date_to=dt.date(2026, 12, 1), out=str(out))
        first = run_preassignment(config)
        with pytest.raises(OutputExistsError, match="--overwrite"):
            run_preassignment(config)
        second = run_preassignment(RunConfig(**{**config.__dict__, "overwrite": True}))
    assert json.loads((out / "summary.json").read_text())["run_id"] == second.summary["run_id"]
    assert first.summary["run_id"] != second.summary["run_id"]


def test_the_python_api_refuses_too(lake):
    with dask.config.set(scheduler="sync"), pytest.raises(UsageError, match="is the lake"):
        run_preassignment(RunConfig(lake=lake, date_from=dt.date(2026, 12, 1),
                                    date_to=dt.date(2026, 12, 1), out=lake, overwrite=True))


def test_run_extract_refuses_out_equal_to_lake_before_reading_the_source(runner, tmp_path):
    url = f"sqlite:///{tmp_path}/source.db"
    load_synthetic(create_engine_from_url(url), SMALL)
    lake = str(tmp_path / "lake")
    result = _run(runner, lake, lake, "--source", url, "--overwrite")
    _refused(result, "is", repr(lake))
    assert not os.path.exists(lake)


# --------------------------------------------------------------------------------------------
# synth --out and extract --lake, locally


def _synth(runner, out, *extra):
    return runner.invoke(main, ["synth", "--out", out, "--users", "30", "--snacks", "12",
                                "--users-per-partition", "15", "--date", DATE, "--workers", "1",
                                "--silent", "--loglevel", "WARNING", *extra])


def test_synth_refuses_what_is_not_its_own(runner, lake, tmp_path):
    before = tree_hash(str(tmp_path))
    (tmp_path / "file").write_text("x")
    _refused(_synth(runner, str(tmp_path / "file"), "--overwrite"), "existing file")
    _refused(_synth(runner, lake, "--overwrite"), "did not write")  # a user's lake
    _refused(_synth(runner, os.path.join(lake, "users", "new")), "inside the lake")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("x")
    _refused(_synth(runner, str(tmp_path / "docs"), "--overwrite"), "'a.md'")
    assert tree_hash(str(tmp_path)) == {**before, "file": tree_hash(str(tmp_path))["file"],
                                        "docs/a.md": tree_hash(str(tmp_path))["docs/a.md"]}


def test_synth_replaces_its_own_lake_only_with_overwrite(runner, tmp_path):
    out = str(tmp_path / "lake")
    assert _synth(runner, out).exit_code == 0
    first = tree_hash(out)
    again = _synth(runner, out)
    assert again.exit_code == 1 and "--overwrite" in again.output, again.output
    assert tree_hash(out) == first
    replaced = _synth(runner, out, "--overwrite", "--seed", "9")
    assert replaced.exit_code == 0, replaced.output
    assert tree_hash(out) != first
    assert sorted(os.listdir(tmp_path)) == [".lake.lock", "lake"]


def _extract(runner, url, lake, *extra):
    return runner.invoke(main, ["extract", "--source", url, "--lake", lake, "--workers", "1",
                                "--silent", "--loglevel", "WARNING", *extra])


def test_extract_refuses_what_is_not_a_lake_of_its_own(runner, lake, tmp_path):
    url = f"sqlite:///{tmp_path}/source.db"
    load_synthetic(create_engine_from_url(url), SMALL)
    (tmp_path / "file").write_text("x")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "v-old").mkdir()  # looks a bit like a version, is not one
    before = tree_hash(str(tmp_path))
    _refused(_extract(runner, url, str(tmp_path / "file")), "existing file")
    _refused(_extract(runner, url, lake), "not versioned")
    _refused(_extract(runner, url, str(tmp_path / "home")), "'v-old'")
    _refused(_extract(runner, url, os.path.join(lake, "ratings", "v")), "inside the lake")
    assert tree_hash(str(tmp_path)) == before


def test_extract_pruning_never_deletes_what_is_not_a_version(tmp_path):
    url = f"sqlite:///{tmp_path}/source.db"
    load_synthetic(create_engine_from_url(url), SMALL)
    lake = tmp_path / "lake"
    first = extract_lake(url, str(lake), users_per_partition=15)
    (lake / "v-mine").mkdir()
    (lake / "v-mine" / "notes.txt").write_text("keep me")
    for _ in range(3):
        extract_lake(url, str(lake), users_per_partition=15)
    assert (lake / "v-mine" / "notes.txt").read_text() == "keep me"
    assert first["version"] not in os.listdir(lake)  # real old versions are pruned


# --------------------------------------------------------------------------------------------
# S3


@pytest.mark.s3
def test_writers_refuse_the_same_on_s3(runner, s3, tmp_path):
    fs = s3.fs
    local = write_tables(worked_example_tables(), str(tmp_path / "lake"))
    fs.put(local + "/", s3.url("lake"), recursive=True)
    fs.pipe(s3.url("notes", "todo.txt"), b"mine")
    fs.pipe(s3.url("object"), b"an object")
    storage = [f"endpoint_url={s3.endpoint_url}"]
    lake = s3.url("lake")
    before = s3_hash(fs, s3.bucket)
    cases = [
        (lake, "is"),
        (lake + "/", "is"),
        (s3.url("lake", "out"), "lies inside"),
        (s3.url("lake", "users"), "lies inside"),
        (s3.url("object"), "existing file"),
        (s3.url("notes"), "'todo.txt'"),
        (s3.url(), "root"),
    ]
    for out, words in cases:
        _refused(_run(runner, lake, out, "--overwrite", storage=storage), repr(out), words)
    url = f"sqlite:///{tmp_path}/source.db"
    load_synthetic(create_engine_from_url(url), SMALL)
    opts = [x for s in storage for x in ("--storage-option", s)]
    _refused(_extract(runner, url, lake, *opts), "not versioned")
    _refused(_extract(runner, url, s3.url("notes"), *opts), "'todo.txt'")
    _refused(_extract(runner, url, s3.url("lake", "users", "x"), *opts), "inside the lake")
    _refused(_synth(runner, lake, "--overwrite", *opts), "did not write")
    _refused(_synth(runner, s3.url("object"), "--overwrite", *opts), "existing file")
    s3fs_cache_clear()
    assert s3_hash(s3.fs, s3.bucket) == before


def s3fs_cache_clear() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.s3
def test_synth_on_s3_publishes_and_replaces_its_own(s3):
    url = s3.url("synth")
    write_lake(SMALL, url, storage_options=s3.storage_options)
    with pytest.raises(OutputExistsError):
        write_lake(SMALL, url, storage_options=s3.storage_options)
    write_lake(SynthConfig(users=20, snacks=12, users_per_partition=15, seed=4), url,
               storage_options=s3.storage_options, overwrite=True)
    s3fs_cache_clear()
    names = sorted(p.rsplit("/", 1)[-1] for p in s3.fs.ls(url, detail=False))
    assert "_lake.json" in names and not [n for n in names if "staging" in n]
    manifest = json.loads(s3.fs.cat_file(url + "/_lake.json"))
    assert manifest["source"]["synth"]["users"] == 20
    parts = s3.fs.ls(url + "/users", detail=False)
    assert len(parts) == 2  # the 30-user lake had 2 partitions, so has the 20-user one
