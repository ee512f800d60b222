"""Static checks of cluster/cloudformation.yaml and cluster/Dockerfile (no AWS, no Docker).

cfn-lint checks the template against the resource schemas; the checks written here are
the security rules it does not know: no ingress from the internet, no wildcard IAM, S3
limited to the parameterised prefixes, and the stack's outputs matching what
preassign.cluster asks for. The Dockerfile must install from the lock and run as non-root.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from preassign.cluster import BUILTIN_DEFAULTS

REPO = Path(__file__).resolve().parents[3]
TEMPLATE = REPO / "cluster" / "cloudformation.yaml"
DOCKERFILE = REPO / "cluster" / "Dockerfile"
WORLD = {"0.0.0.0/0", "::/0"}


class _CfnLoader(yaml.SafeLoader):
    """YAML loader that turns CloudFormation short forms (!Ref, !Sub ...) into dicts."""


def _construct_intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_intrinsic)


def load_template(text: str) -> dict[str, Any]:
    return yaml.load(text, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(TEMPLATE.read_text())


def _resources(template: dict, *types: str) -> Iterator[tuple[str, dict]]:
    for name, resource in template["Resources"].items():
        if resource["Type"] in types:
            yield name, resource.get("Properties", {})


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _resolve(value: Any, template: dict) -> Any:
    """Replace a Ref to a parameter by the parameter's default (what a lazy deploy gets)."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        parameter = template.get("Parameters", {}).get(value["Ref"])
        if parameter is not None:
            return parameter.get("Default")
    return value


# ----------------------------------------------------------------------------- checks


def ingress_rules(template: dict) -> Iterator[tuple[str, dict]]:
    """Every ingress rule of the template, inline or standalone, with where it is from."""
    for name, props in _resources(template, "AWS::EC2::SecurityGroup"):
        for i, rule in enumerate(props.get("SecurityGroupIngress", [])):
            yield f"{name}.SecurityGroupIngress[{i}]", rule
    for name, props in _resources(template, "AWS::EC2::SecurityGroupIngress"):
        yield name, props


def world_open_ingress(template: dict) -> list[str]:
    """Names of ingress rules open to 0.0.0.0/0 or ::/0, or to a CIDR we cannot see."""
    found = []
    for name, rule in ingress_rules(template):
        for key in ("CidrIp", "CidrIpv6"):
            if key not in rule:
                continue
            cidr = _resolve(rule[key], template)
            if not isinstance(cidr, str) or cidr in WORLD:
                found.append(name)
    return found


def policy_statements(template: dict) -> Iterator[tuple[str, dict]]:
    """Every IAM statement of roles, managed and inline policies."""
    for name, props in _resources(template, "AWS::IAM::Role"):
        for policy in props.get("Policies", []):
            for statement in _as_list(policy["PolicyDocument"]["Statement"]):
                yield f"{name}/{policy['PolicyName']}", statement
    for name, props in _resources(template, "AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
        for statement in _as_list(props["PolicyDocument"]["Statement"]):
            yield name, statement


def wildcard_statements(template: dict) -> list[str]:
    """Statements granting '*' actions, service-wide actions on '*', or Not* forms."""
    found = []
    for name, statement in policy_statements(template):
        label = f"{name}:{statement.get('Sid', '?')}"
        if {"NotAction", "NotResource"} & set(statement):
            found.append(label)
            continue
        if statement.get("Effect") != "Allow":
            continue
        actions = [str(a) for a in _as_list(statement.get("Action", []))]
        resources = _as_list(statement.get("Resource", []))
        if "*" in actions:
            found.append(label)
        elif "*" in resources and any(a.endswith(":*") or a.endswith("*") for a in actions):
            found.append(label)
    return found


def _sub_text(value: Any) -> str:
    """The text of a resource ARN: a plain string or the template of a Fn::Sub."""
    if isinstance(value, dict) and "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        return sub if isinstance(sub, str) else sub[0]
    return value if isinstance(value, str) else repr(value)


def s3_scope_violations(template: dict) -> list[str]:
    """S3 grants outside s3://LakeBucket/LakePrefix (read) and OutputBucket/OutputPrefix."""
    bucket = "arn:${AWS::Partition}:s3:::${%s}"
    read_only = {"s3:GetObject", "s3:ListBucket"}
    found = []
    for name, statement in policy_statements(template):
        actions = [a for a in _as_list(statement.get("Action", [])) if str(a).startswith("s3:")]
        if not actions:
            continue
        label = f"{name}:{statement.get('Sid', '?')}"
        if any("*" in a for a in actions):
            found.append(f"{label}: wildcard action")
        for resource in _as_list(statement.get("Resource", [])):
            text = _sub_text(resource)
            kind = next((k for k in ("Lake", "Output") if f"${{{k}Bucket}}" in text), None)
            if kind is None:
                found.append(f"{label}: {text} is neither the lake nor the output bucket")
                continue
            if kind == "Lake" and not set(actions) <= read_only:
                found.append(f"{label}: writes to the lake")
            prefix = f"${{{kind}Prefix}}"
            objects = (bucket % f"{kind}Bucket") + f"/{prefix}"
            if text in (objects, objects + "/*"):
                if "s3:ListBucket" in actions:
                    found.append(f"{label}: ListBucket on objects")
                continue
            if text == bucket % f"{kind}Bucket" and actions == ["s3:ListBucket"]:
                condition = statement.get("Condition", {}).get("StringLike", {})
                allowed = [_sub_text(p) if not isinstance(p, dict) or "Ref" not in p
                           else f"${{{p['Ref']}}}"
                           for p in _as_list(condition.get("s3:prefix", []))]
                if sorted(allowed) == sorted([prefix, prefix + "/*"]):
                    continue
                found.append(f"{label}: listing {text} is not limited to {prefix}")
                continue
            found.append(f"{label}: {text} is outside {prefix}")
    return found


# ----------------------------------------------------------------------------- template


def test_cfn_lint_reports_nothing() -> None:
    from cfnlint.api import ManualArgs, lint_file

    matches = lint_file(TEMPLATE, config=ManualArgs(regions=["us-east-1", "eu-west-1"]))
    problems = [str(m) for m in matches if m.rule.id[0] in "EW"]
    assert problems == []


def test_no_ingress_is_open_to_the_world(template: dict) -> None:
    assert list(ingress_rules(template)), "expected ingress rules to check"
    assert world_open_ingress(template) == []


def test_every_ingress_comes_from_a_security_group(template: dict) -> None:
    for name, rule in ingress_rules(template):
        assert "SourceSecurityGroupId" in rule, name
        assert not {"CidrIp", "CidrIpv6", "SourcePrefixListId"} & set(rule), name


def test_dask_ports_open_only_to_the_group_itself(template: dict) -> None:
    rules = dict(_resources(template, "AWS::EC2::SecurityGroupIngress"))
    own = rules["DaskIngressFromItself"]
    assert own["SourceSecurityGroupId"] == own["GroupId"] == {
        "Fn::GetAtt": ["DaskSecurityGroup", "GroupId"]
    }
    fargate = BUILTIN_DEFAULTS["fargate"]
    dashboard = 8787
    for port in (fargate["scheduler_port"], dashboard, fargate["worker_port"],
                 fargate["nanny_port"]):
        assert own["FromPort"] <= port <= own["ToPort"], port
    # The only other source is the optional client group, and only for scheduler and dashboard.
    clients = rules["DaskIngressFromClients"]
    assert clients["SourceSecurityGroupId"] == {"Ref": "ClientSecurityGroupId"}
    assert (clients["FromPort"], clients["ToPort"]) == (8786, 8787)
    assert template["Resources"]["DaskIngressFromClients"]["Condition"] == "HasClientSecurityGroup"
    assert set(rules) == {"DaskIngressFromItself", "DaskIngressFromClients"}


def test_egress_is_https_and_dask_within_the_group(template: dict) -> None:
    for name, props in _resources(template, "AWS::EC2::SecurityGroup"):
        assert [(r["FromPort"], r["ToPort"]) for r in props["SecurityGroupEgress"]] == [
            (443, 443)
        ], name
    [(_, egress)] = _resources(template, "AWS::EC2::SecurityGroupEgress")
    assert egress["DestinationSecurityGroupId"] == egress["GroupId"]


@pytest.mark.parametrize(
    "snippet",
    [
        """
        Resources:
          G:
            Type: AWS::EC2::SecurityGroup
            Properties:
              SecurityGroupIngress:
                - {IpProtocol: tcp, FromPort: 8786, ToPort: 8787, CidrIp: 0.0.0.0/0}
        """,
        """
        Resources:
          I:
            Type: AWS::EC2::SecurityGroupIngress
            Properties: {GroupId: sg-1, IpProtocol: tcp, FromPort: 8786, ToPort: 8786,
                         CidrIpv6: "::/0"}
        """,
        """
        Parameters:
          Anywhere: {Type: String, Default: 0.0.0.0/0}
        Resources:
          I:
            Type: AWS::EC2::SecurityGroupIngress
            Properties: {GroupId: sg-1, IpProtocol: tcp, FromPort: 22, ToPort: 22,
                         CidrIp: !Ref Anywhere}
        """,
    ],
    ids=["inline-ipv4", "standalone-ipv6", "via-parameter"],
)
def test_world_open_check_catches_open_rules(snippet: str) -> None:
    assert world_open_ingress(load_template(snippet)) != []


def test_no_wildcard_iam(template: dict) -> None:
    assert len(list(policy_statements(template))) >= 10
    assert wildcard_statements(template) == []


@pytest.mark.parametrize(
    "statement",
    [
        "{Effect: Allow, Action: '*', Resource: '*'}",
        "{Effect: Allow, Action: 's3:*', Resource: '*'}",
        "{Effect: Allow, Action: ['ecs:RunTask', 'ec2:Describe*'], Resource: ['*']}",
        "{Effect: Allow, NotAction: 'iam:*', Resource: '*'}",
    ],
    ids=["star", "service-star", "prefix-star", "not-action"],
)
def test_wildcard_check_catches_wildcards(statement: str) -> None:
    snippet = f"""
    Resources:
      P:
        Type: AWS::IAM::ManagedPolicy
        Properties:
          PolicyDocument: {{Version: "2012-10-17", Statement: [{statement}]}}
    """
    assert wildcard_statements(load_template(snippet)) != []


def test_resource_star_only_where_aws_allows_nothing_else(template: dict) -> None:
    no_resource_level = {
        "ecr:GetAuthorizationToken",
        "ecs:RegisterTaskDefinition",
        "ecs:DeregisterTaskDefinition",
        "ecs:DescribeTaskDefinition",
        "ecs:ListTaskDefinitions",
        "ecs:ListAccountSettings",
        "ec2:DescribeNetworkInterfaces",
    }
    for name, statement in policy_statements(template):
        if "*" in _as_list(statement.get("Resource", [])):
            actions = set(_as_list(statement["Action"]))
            conditioned = "Condition" in statement
            assert conditioned or actions <= no_resource_level, (name, statement)


def test_s3_is_scoped_to_the_parameterised_prefixes(template: dict) -> None:
    assert s3_scope_violations(template) == []
    grants = [s for _, s in policy_statements(template)
              if any(str(a).startswith("s3:") for a in _as_list(s["Action"]))]
    assert {s["Sid"] for s in grants} == {"ListLakePrefix", "ReadLake", "ListOutputPrefix",
                                          "WriteOutput"}


@pytest.mark.parametrize(
    ("resource", "actions"),
    [
        ("!Sub 'arn:${AWS::Partition}:s3:::${LakeBucket}/*'", "[s3:GetObject]"),
        ("!Sub 'arn:${AWS::Partition}:s3:::${LakeBucket}/${LakePrefix}/*'", "[s3:PutObject]"),
        ("!Sub 'arn:${AWS::Partition}:s3:::${OutputBucket}'", "[s3:ListBucket]"),
        ("'arn:aws:s3:::other-bucket/*'", "[s3:GetObject]"),
        ("'*'", "[s3:GetObject]"),
    ],
    ids=["whole-lake-bucket", "write-lake", "unconditioned-list", "other-bucket", "star"],
)
def test_s3_scope_check_catches_wide_grants(resource: str, actions: str) -> None:
    snippet = f"""
    Resources:
      P:
        Type: AWS::IAM::ManagedPolicy
        Properties:
          PolicyDocument:
            Version: "2012-10-17"
            Statement: [{{Sid: X, Effect: Allow, Action: {actions}, Resource: {resource}}}]
    """
    assert s3_scope_violations(load_template(snippet)) != []


def test_prefix_parameters_refuse_wildcards_and_slashes(template: dict) -> None:
    for name in ("LakePrefix", "OutputPrefix"):
        pattern = re.compile(template["Parameters"][name]["AllowedPattern"])
        assert pattern.fullmatch("lake/v1")
        for bad in ("", "/lake", "lake/", "lake/*", "la?ke", "a//b", "${aws:username}"):
            assert not pattern.fullmatch(bad), (name, bad)


def test_task_roles_are_for_ecs_tasks_of_this_account(template: dict) -> None:
    for name in ("TaskRole", "JobRole", "ExecutionRole"):
        [statement] = template["Resources"][name]["Properties"]["AssumeRolePolicyDocument"][
            "Statement"
        ]
        assert statement["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
        assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == {
            "Ref": "AWS::AccountId"
        }
    secret_reads = [(n, s) for n, s in policy_statements(template)
                    if "secretsmanager:GetSecretValue" in _as_list(s["Action"])]
    assert [(n, s["Resource"]) for n, s in secret_reads] == [
        ("TaskRole/read-tls-secret", {"Ref": "TlsSecret"})
    ]


def test_scheduled_run(template: dict) -> None:
    [(_, schedule)] = _resources(template, "AWS::Scheduler::Schedule")
    assert schedule["ScheduleExpression"] == {"Ref": "ScheduleExpression"}
    assert template["Parameters"]["ScheduleExpression"]["Default"].startswith("cron(")
    ecs = schedule["Target"]["EcsParameters"]
    assert ecs["TaskDefinitionArn"] == {"Ref": "JobTaskDefinition"}
    assert ecs["LaunchType"] == "FARGATE"
    assert ecs["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"
    [container] = template["Resources"]["JobTaskDefinition"]["Properties"][
        "ContainerDefinitions"
    ]
    command = " ".join(container["Command"])
    assert "exec preassign run --cluster local" in command
    assert template["Resources"]["JobTaskDefinition"]["Properties"]["TaskRoleArn"] == {
        "Fn::GetAtt": ["JobRole", "Arn"]
    }


def test_outputs_fill_the_fargate_defaults(template: dict) -> None:
    from preassign.cluster import _STACK_OUTPUTS

    outputs = template["Outputs"]
    for key, output in _STACK_OUTPUTS.items():
        name = output.split(",")[0]
        assert name in outputs, key
        assert key in outputs[name]["Description"], (key, outputs[name]["Description"])


def test_ecs_cluster_offers_fargate_spot(template: dict) -> None:
    [(_, cluster)] = _resources(template, "AWS::ECS::Cluster")
    assert set(cluster["CapacityProviders"]) == {"FARGATE", "FARGATE_SPOT"}


# ----------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


@pytest.fixture(scope="module")
def docker() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def _pip_installs(docker: list[tuple[str, str]]) -> list[list[str]]:
    installs = []
    for keyword, arguments in docker:
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;", arguments):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"] or words[:4] == ["python", "-m", "pip", "install"]:
                installs.append(words)
    return installs


def test_dockerfile_base_image(docker: list[tuple[str, str]]) -> None:
    assert [a for k, a in docker if k == "FROM"] == ["python:3.11-slim"]


def test_dockerfile_installs_only_from_the_lock(docker: list[tuple[str, str]]) -> None:
    installs = _pip_installs(docker)
    assert installs == [
        ["pip", "install", "--no-deps", "-r", "requirements.lock"],
        ["pip", "install", "--no-deps", "."],
    ]
    copies = [a for k, a in docker if k == "COPY"]
    assert "requirements.lock ./" in copies
    lock_copy = copies.index("requirements.lock ./")
    assert lock_copy < copies.index("preassign ./preassign")
    assert any("pip check" in a for k, a in docker if k == "RUN")
    assert (REPO / "requirements.lock").is_file()


def test_dockerfile_runs_as_non_root(docker: list[tuple[str, str]]) -> None:
    users = [a for k, a in docker if k == "USER"]
    assert users, "no USER instruction: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    last_user = max(i for i, (k, _) in enumerate(docker) if k == "USER")
    assert all(k not in ("RUN",) for k, _ in docker[last_user:]), "RUN after USER"


def test_dockerfile_provides_the_dask_commands(docker: list[tuple[str, str]]) -> None:
    runs = " ".join(a for k, a in docker if k == "RUN")
    for name in ("dask-scheduler", "dask-worker"):
        assert f"ln -sf preassign-entrypoint /usr/local/bin/{name}" in runs
    assert ("ENTRYPOINT", '["/usr/local/bin/preassign-entrypoint"]') in docker
    assert any(a.endswith("cluster/entrypoint.sh /usr/local/bin/preassign-entrypoint")
               for k, a in docker if k == "COPY")
