"""Safe data exchange: nothing code-executing is read from storage, SQL uses bound
parameters, and the Fargate defaults keep TLS on, private IPs and no world-open ingress."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import sqlalchemy as sa

PACKAGE = Path(__file__).resolve().parents[2] / "preassign"
SOURCES = sorted(PACKAGE.glob("*.py"))

UNSAFE_CALLS = {
    ("pickle", "load"), ("pickle", "loads"), ("cloudpickle", "load"), ("cloudpickle", "loads"),
    ("marshal", "load"), ("marshal", "loads"), ("pd", "read_pickle"), ("pandas", "read_pickle"),
    ("yaml", "load"), ("yaml", "unsafe_load"), ("shelve", "open"), ("joblib", "load"),
}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def test_no_code_executing_format_is_read_anywhere():
    found = []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for call in _calls(tree):
            f = call.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                if (f.value.id, f.attr) in UNSAFE_CALLS:
                    found.append(f"{path.name}:{call.lineno} {f.value.id}.{f.attr}")
                if f.attr == "load" and f.value.id == "np" and any(
                        k.arg == "allow_pickle" for k in call.keywords):
                    found.append(f"{path.name}:{call.lineno} np.load(allow_pickle)")
            if isinstance(f, ast.Name) and f.id in ("eval", "exec"):
                found.append(f"{path.name}:{call.lineno} {f.id}")
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "cloudpickle", "marshal", "shelve"} & set(names), \
                    f"{path.name} imports a pickle-like module"
    assert not found, found


def test_sql_is_never_built_from_strings():
    pattern = re.compile(r"(text|execute|exec_driver_sql)\(\s*f[\"']|\.format\([^)]*\)\s*\)|%\s*\(")
    for path in SOURCES:
        source = path.read_text()
        for line_no, line in enumerate(source.splitlines(), 1):
            if "execute(" in line or "text(" in line:
                assert not pattern.search(line), f"{path.name}:{line_no}: SQL built from a string"
        assert "exec_driver_sql" not in source, path.name


def test_range_reads_bind_their_parameters():
    from types import SimpleNamespace

    from preassign import extract

    plan = SimpleNamespace(watermarked=frozenset({"ratings"}), watermark_to={"ratings": 987_654})
    stmt = extract._select_range(plan, "ratings", 1_000, 2_000, since=555)
    compiled = stmt.compile(dialect=sa.dialects.mysql.dialect())
    for value in ("1000", "2000", "555", "987654"):
        assert value not in str(compiled)
    assert set(compiled.params.values()) >= {1_000, 2_000, 555, 987_654}


def test_fargate_defaults_are_secure():
    from preassign.cluster import ClusterSpec, fargate_kwargs

    kwargs = fargate_kwargs(ClusterSpec(
        kind="fargate", cluster_arn="arn:aws:ecs:eu-west-1:123456789012:cluster/preassign",
        vpc="vpc-1", subnets=("subnet-1",), security_groups=("sg-1",),
        execution_role_arn="arn:aws:iam::123456789012:role/exec",
        task_role_arn="arn:aws:iam::123456789012:role/task",
        image="123456789012.dkr.ecr.eu-west-1.amazonaws.com/preassign:1", log_group="/preassign",
        tls_secret_arn="arn:aws:secretsmanager:eu-west-1:123456789012:secret:tls",
        scheduler_task_definition_arn=(
            "arn:aws:ecs:eu-west-1:123456789012:task-definition/p-dask-scheduler:1"),
        worker_task_definition_arn=(
            "arn:aws:ecs:eu-west-1:123456789012:task-definition/p-dask-worker:1"),
        tls_ca_file=str(PACKAGE.parent / "tests" / "support" / "lakes.py"),
        tls_cert=str(PACKAGE.parent / "tests" / "support" / "lakes.py"),
        tls_key=str(PACKAGE.parent / "tests" / "support" / "lakes.py")))
    assert kwargs["fargate_use_private_ip"] is True
    assert kwargs["security_groups"] == ["sg-1"] or kwargs["security_groups"] == ("sg-1",)
    assert kwargs["security"].require_encryption
    assert any("--tls-cert" in str(a) for a in kwargs.get("scheduler_extra_args", []))
