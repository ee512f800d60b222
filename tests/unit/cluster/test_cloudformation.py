"""Static checks of cluster/cloudformation.yaml and cluster/Dockerfile (no AWS, no Docker).

cfn-lint checks the template against the resource schemas; the checks written here are
the security rules it does not know: no ingress from the internet, no dashboard beyond the
task group, egress only to the VPC endpoints (and the database, for the extraction), no
wildcard IAM, S3 limited to the parameterised prefixes with listings ending in "/", who
may write what (the extraction the lake, the scheduled run the outputs, notebook clusters
the scratch prefix), one identity per secret, customer-managed KMS, and the stack's outputs
matching what preassign.cluster asks for. The Dockerfile must install from the hashed lock,
pin its base image, check health and run as non-root.
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
DOCKERIGNORE = REPO / ".dockerignore"
IMAGE_LOCK = REPO / "cluster" / "image.lock"
WORLD = {"0.0.0.0/0", "::/0"}
NO_VALUE = {"Ref": "AWS::NoValue"}


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


def _statements(document: dict) -> Iterator[dict]:
    """A policy document's statements, both branches of a Fn::If included."""
    for statement in _as_list(document["Statement"]):
        if isinstance(statement, dict) and set(statement) == {"Fn::If"}:
            for branch in statement["Fn::If"][1:]:
                if branch != NO_VALUE:
                    yield branch
        else:
            yield statement


def policy_statements(template: dict) -> Iterator[tuple[str, dict]]:
    """Every IAM statement of roles, managed and inline policies."""
    for name, props in _resources(template, "AWS::IAM::Role"):
        for policy in props.get("Policies", []):
            for statement in _statements(policy["PolicyDocument"]):
                yield f"{name}/{policy['PolicyName']}", statement
    for name, props in _resources(template, "AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
        for statement in _statements(props["PolicyDocument"]):
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


# The places the stack's roles may touch: (bucket parameter, prefix parameter).
S3_PLACES = [("LakeBucket", "LakePrefix"), ("OutputBucket", "OutputPrefix"),
             ("OutputBucket", "ScratchPrefix")]
READ_ONLY = {"s3:GetObject", "s3:ListBucket"}


def _prefix_values(condition: dict) -> list[str]:
    values = _as_list(condition.get("StringLike", {}).get("s3:prefix", []))
    return [_sub_text(v) if not isinstance(v, dict) or "Ref" not in v else f"${{{v['Ref']}}}"
            for v in values]


def s3_scope_violations(template: dict, lake_writers: frozenset[str] = frozenset()) -> list[str]:
    """S3 grants outside the lake, output and scratch prefixes, or lake writes elsewhere.

    Listing must be conditioned on exactly ``<prefix>/`` and ``<prefix>/*`` (a condition on
    ``lake/v1`` alone would also list ``lake/v10``). Only the policies named in
    ``lake_writers`` may write the lake.
    """
    bucket = "arn:${AWS::Partition}:s3:::${%s}"
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
            places = [(b, p) for b, p in S3_PLACES if f"${{{b}}}" in text]
            if not places:
                found.append(f"{label}: {text} is neither the lake nor the output bucket")
                continue
            if text == bucket % places[0][0]:  # the bucket itself: listing only
                if actions != ["s3:ListBucket"]:
                    found.append(f"{label}: {actions} on the bucket {text}")
                    continue
                allowed = _prefix_values(statement.get("Condition", {}))
                if not any(sorted(allowed) == sorted([f"${{{p}}}/", f"${{{p}}}/*"])
                           for _, p in places):
                    found.append(f"{label}: listing {text} is not limited to one prefix "
                                 f"with a trailing /: {allowed}")
                continue
            place = next(((b, p) for b, p in places
                          if text in ((bucket % b) + f"/${{{p}}}", (bucket % b) + f"/${{{p}}}/*")),
                         None)
            if place is None:
                found.append(f"{label}: {text} is outside every allowed prefix")
                continue
            if "s3:ListBucket" in actions:
                found.append(f"{label}: ListBucket on objects")
            if place[1] == "LakePrefix" and not set(actions) <= READ_ONLY and (
                    name not in lake_writers):
                found.append(f"{label}: writes to the lake")
    return found


def role_grants(template: dict) -> dict[str, list[dict]]:
    """Each role's statements: inline policies, attached managed policies, AWS::IAM::Policy."""
    managed = {n: list(_statements(p["PolicyDocument"]))
               for n, p in _resources(template, "AWS::IAM::ManagedPolicy")}
    grants: dict[str, list[dict]] = {}
    for name, props in _resources(template, "AWS::IAM::Role"):
        statements = [s for policy in props.get("Policies", [])
                      for s in _statements(policy["PolicyDocument"])]
        for arn in props.get("ManagedPolicyArns", []):
            statements += managed[arn["Ref"]]
        grants[name] = statements
    for _, props in _resources(template, "AWS::IAM::Policy"):
        for role in props["Roles"]:
            grants[role["Ref"]] += list(_statements(props["PolicyDocument"]))
    return grants


S3_WRITES = {"s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}


def s3_writable_prefixes(statements: list[dict]) -> set[str]:
    """The prefix parameters a role may write objects under."""
    prefixes = set()
    for statement in statements:
        if statement.get("Effect") != "Allow":
            continue
        if not S3_WRITES & set(_as_list(statement.get("Action", []))):
            continue
        for resource in _as_list(statement.get("Resource", [])):
            prefixes |= set(re.findall(r"/\$\{(\w+Prefix)\}", _sub_text(resource)))
    return prefixes


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
    # The only other source is the optional client group, and only for the scheduler port
    # (the dashboard is reached by Session Manager port forwarding, never by a group rule).
    clients = rules["DaskIngressFromClients"]
    assert clients["SourceSecurityGroupId"] == {"Ref": "ClientSecurityGroupId"}
    assert (clients["FromPort"], clients["ToPort"]) == (8786, 8786)
    assert template["Resources"]["DaskIngressFromClients"]["Condition"] == "HasClientSecurityGroup"
    dask_rules = {n for n, r in rules.items()
                  if r["GroupId"] == {"Fn::GetAtt": ["DaskSecurityGroup", "GroupId"]}}
    assert dask_rules == {"DaskIngressFromItself", "DaskIngressFromClients"}


def test_no_dashboard_port_beyond_the_task_group(template: dict) -> None:
    # Every rule into the Dask tasks' group that covers 8787 comes from that group itself
    # (and the dashboard listens on 127.0.0.1 anyway: test_cluster_fargate).
    dask_group = {"Fn::GetAtt": ["DaskSecurityGroup", "GroupId"]}
    checked = 0
    for name, rule in ingress_rules(template):
        if rule.get("GroupId", dask_group) != dask_group and not name.startswith("Dask"):
            continue
        ports = (_resolve(rule["FromPort"], template), _resolve(rule["ToPort"], template))
        if rule["IpProtocol"] == "-1" or int(ports[0]) <= 8787 <= int(ports[1]):
            assert rule["SourceSecurityGroupId"] == dask_group, name
            checked += 1
    assert checked == 1


def test_endpoints_and_database_accept_only_the_stacks_groups(template: dict) -> None:
    rules = dict(_resources(template, "AWS::EC2::SecurityGroupIngress"))
    own_groups = {f"{g}SecurityGroup" for g in ("Dask", "Job", "Extract")}
    for name, rule in rules.items():
        if rule["GroupId"] == {"Ref": "EndpointSecurityGroup"}:
            assert (rule["FromPort"], rule["ToPort"]) == (443, 443), name
            assert rule["SourceSecurityGroupId"]["Fn::GetAtt"][0] in own_groups, name
    db = rules["SourceDbIngressFromExtract"]
    assert db["GroupId"] == {"Ref": "SourceDbSecurityGroupId"}
    assert db["SourceSecurityGroupId"] == {"Fn::GetAtt": ["ExtractSecurityGroup", "GroupId"]}
    assert db["FromPort"] == db["ToPort"] == {"Ref": "SourceDbPort"}
    assert template["Parameters"]["SourceDbPort"]["Default"] == 3306
    assert template["Resources"]["SourceDbIngressFromExtract"]["Condition"] == "HasExtract"


ENDPOINTS = {"If": {"Fn::If": ["UseExistingEndpoints", {"Ref": "EndpointSecurityGroupId"},
                               {"Ref": "EndpointSecurityGroup"}]}}


def egress_rules(template: dict) -> Iterator[tuple[str, dict]]:
    """Every egress rule, inline or standalone."""
    for name, props in _resources(template, "AWS::EC2::SecurityGroup"):
        for i, rule in enumerate(props.get("SecurityGroupEgress", [])):
            yield f"{name}.SecurityGroupEgress[{i}]", rule
    for name, props in _resources(template, "AWS::EC2::SecurityGroupEgress"):
        yield name, props


def test_egress_only_to_endpoints_the_group_itself_and_the_database(template: dict) -> None:
    endpoints = ENDPOINTS["If"]
    for name, props in _resources(template, "AWS::EC2::SecurityGroup"):
        assert props.get("SecurityGroupEgress"), f"{name} would get AWS's allow-all egress"
    for name, rule in egress_rules(template):
        group = name.split(".")[0]
        if "CidrIp" in rule or "CidrIpv6" in rule:
            # Only the endpoints' "no egress" placeholder: a loopback /32 nothing can reach.
            assert group == "EndpointSecurityGroup", name
            assert rule == {"IpProtocol": "-1", "CidrIp": "127.0.0.1/32", "Description": "No egress"}
        elif "DestinationPrefixListId" in rule:
            assert rule["DestinationPrefixListId"] == {"Ref": "S3PrefixListId"}, name
            assert (rule["FromPort"], rule["ToPort"]) == (443, 443), name
        elif rule["DestinationSecurityGroupId"] == endpoints:
            assert (rule["FromPort"], rule["ToPort"]) == (443, 443), name
        elif rule["DestinationSecurityGroupId"] == {"Ref": "SourceDbSecurityGroupId"}:
            assert group == "ExtractSecurityGroup", name
            assert rule["FromPort"] == rule["ToPort"] == {"Ref": "SourceDbPort"}, name
        else:
            assert name == "DaskEgressToItself", name
            assert rule["DestinationSecurityGroupId"] == rule["GroupId"]
            assert (rule["FromPort"], rule["ToPort"]) == (8786, 8789)
    # Every task group can reach the endpoints and S3, which is all a task needs.
    for group in ("DaskSecurityGroup", "JobSecurityGroup", "ExtractSecurityGroup"):
        egress = template["Resources"][group]["Properties"]["SecurityGroupEgress"]
        assert {"DestinationSecurityGroupId": endpoints} .items() <= egress[0].items(), group
        assert egress[1]["DestinationPrefixListId"] == {"Ref": "S3PrefixListId"}, group


def test_vpc_endpoints(template: dict) -> None:
    services = {}
    for name, props in _resources(template, "AWS::EC2::VPCEndpoint"):
        service = props["ServiceName"]["Fn::Sub"].split("}.", 1)[1]
        services[service] = (props["VpcEndpointType"], template["Resources"][name]["Condition"])
        if props["VpcEndpointType"] == "Interface":
            assert props["PrivateDnsEnabled"] is True
            assert props["SecurityGroupIds"] == [{"Ref": "EndpointSecurityGroup"}]
            assert props["SubnetIds"] == {"Ref": "PrivateSubnetIds"}
    assert services == {
        "ecr.api": ("Interface", "CreateEndpoints"),
        "ecr.dkr": ("Interface", "CreateEndpoints"),
        "logs": ("Interface", "CreateEndpoints"),
        "secretsmanager": ("Interface", "CreateEndpoints"),
        "sts": ("Interface", "CreateEndpoints"),
        "ssmmessages": ("Interface", "CreateExecEndpoint"),
        "s3": ("Gateway", "CreateEndpoints"),
    }


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
        "ecs:DescribeTaskDefinition",
        "ecs:ListAccountSettings",
        "ec2:DescribeNetworkInterfaces",
        "ssmmessages:CreateControlChannel",
        "ssmmessages:CreateDataChannel",
        "ssmmessages:OpenControlChannel",
        "ssmmessages:OpenDataChannel",
        "logs:DescribeLogGroups",
    }
    for name, statement in policy_statements(template):
        if "*" in _as_list(statement.get("Resource", [])):
            actions = set(_as_list(statement["Action"]))
            conditioned = "Condition" in statement
            assert conditioned or actions <= no_resource_level, (name, statement)


def test_s3_is_scoped_to_the_parameterised_prefixes(template: dict) -> None:
    assert s3_scope_violations(template, lake_writers=frozenset({"LakeWritePolicy"})) == []
    grants = [s for _, s in policy_statements(template)
              if any(str(a).startswith("s3:") for a in _as_list(s["Action"]))]
    assert {s["Sid"] for s in grants} == {
        "ListLakePrefix", "ReadLake", "WriteLake", "ListOutputPrefix", "WriteOutput",
        "ListScratchPrefix", "WriteScratch"}
    # Without naming the extraction's policy as a lake writer, the check finds it.
    assert any("writes to the lake" in v for v in s3_scope_violations(template))


def test_every_s3_listing_condition_ends_in_a_slash(template: dict) -> None:
    conditions = [s["Condition"] for _, s in policy_statements(template)
                  if "s3:ListBucket" in _as_list(s["Action"])]
    assert len(conditions) >= 4
    for condition in conditions:
        assert set(condition) == {"StringLike"}
        for value in _prefix_values(condition):
            assert value.endswith(("/", "/*")), value


def test_who_writes_what(template: dict) -> None:
    writes = {role: s3_writable_prefixes(statements)
              for role, statements in role_grants(template).items()}
    assert writes["ExtractRole"] == {"LakePrefix"}         # the extraction: the lake only
    assert writes["JobRole"] == {"OutputPrefix"}           # the scheduled run: production outputs
    assert writes["TaskRole"] == {"ScratchPrefix"}         # notebook and CLI clusters: scratch
    for role in ("ExecutionRole", "ExtractExecutionRole", "SchedulerRole",
                 "ExtractSchedulerRole"):
        assert writes[role] == set(), role
    # The prefixes are different parameters; preflight checks their values do not nest.
    assert {"LakePrefix", "OutputPrefix", "ScratchPrefix"} <= set(template["Parameters"])


def test_s3_keys_are_used_only_through_s3(template: dict) -> None:
    kms_statements = [(n, s) for n, s in policy_statements(template)
                      if any(str(a).startswith("kms:") for a in _as_list(s["Action"]))]
    assert kms_statements
    for name, statement in kms_statements:
        via = statement["Condition"]["StringEquals"]["kms:ViaService"]["Fn::Sub"]
        assert via in ("s3.${AWS::Region}.amazonaws.com",
                       "secretsmanager.${AWS::Region}.amazonaws.com"), name
        assert set(_as_list(statement["Action"])) <= {"kms:Decrypt", "kms:GenerateDataKey"}, name
        if via.startswith("s3."):
            assert statement["Resource"] == {"Ref": "BucketKmsKeyArns"}, name
    # Readers decrypt; only writers generate data keys.
    for name in ("LakeReadPolicy",):
        [statement] = [s for n, s in kms_statements if n == name]
        assert _as_list(statement["Action"]) == ["kms:Decrypt"]


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
    for name in ("TaskRole", "JobRole", "ExecutionRole", "ExtractRole", "ExtractExecutionRole"):
        [statement] = template["Resources"][name]["Properties"]["AssumeRolePolicyDocument"][
            "Statement"
        ]
        assert statement["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
        assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == {
            "Ref": "AWS::AccountId"
        }
    # One identity per secret: the tasks read the server identity, people (through
    # InterimIdentityPolicy) the interim client identity, ECS the database password for
    # the extraction only. No role may read two.
    secret_reads = sorted((n, s["Resource"]["Ref"]) for n, s in policy_statements(template)
                          if "secretsmanager:GetSecretValue" in _as_list(s["Action"]))
    assert secret_reads == [
        ("ExtractExecutionRole/pull-image-write-logs-read-db-password", "SourceDbSecretArn"),
        ("InterimIdentityPolicy", "ClientTlsSecret"),
        ("TaskTlsSecretPolicy", "TlsSecret"),
    ]
    tls_policy = template["Resources"]["TaskTlsSecretPolicy"]["Properties"]
    assert tls_policy["Roles"] == [{"Ref": "TaskRole"}]
    for role, statements in role_grants(template).items():
        read = {s["Resource"]["Ref"] for s in statements
                if "secretsmanager:GetSecretValue" in _as_list(s["Action"])}
        assert len(read) <= 1, role


def test_secrets_are_encrypted_and_fenced(template: dict) -> None:
    secrets = dict(_resources(template, "AWS::SecretsManager::Secret"))
    assert set(secrets) == {"TlsSecret", "ClientTlsSecret"}
    for name, props in secrets.items():
        assert props["KmsKeyId"] == {"Ref": "StackKey"}, name
        assert not re.search(r"PRIVATE KEY|BEGIN", props["SecretString"]), name
    policies = {p["SecretId"]["Ref"]: p for _, p in
                _resources(template, "AWS::SecretsManager::ResourcePolicy")}
    assert set(policies) == set(secrets)
    for policy in policies.values():
        assert policy["BlockPublicPolicy"] is True
        [deny] = policy["ResourcePolicy"]["Statement"]
        assert deny["Effect"] == "Deny" and deny["Action"] == "secretsmanager:GetSecretValue"
    server = policies["TlsSecret"]["ResourcePolicy"]["Statement"][0]
    assert server["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": {
        "Fn::GetAtt": ["TaskRole", "Arn"]}}}
    client = policies["ClientTlsSecret"]["ResourcePolicy"]["Statement"][0]
    denied = client["Condition"]["ArnEquals"]["aws:PrincipalArn"]
    assert {"Fn::GetAtt": ["TaskRole", "Arn"]} in denied
    assert {"Fn::GetAtt": ["JobRole", "Arn"]} in denied
    assert template["Resources"]["ClientTlsSecret"]["Condition"] == "Interim"


def test_customer_managed_key_and_retained_data(template: dict) -> None:
    key = template["Resources"]["StackKey"]
    assert key["Properties"]["EnableKeyRotation"] is True
    for statement in key["Properties"]["KeyPolicy"]["Statement"]:
        assert statement["Principal"] not in ("*", {"AWS": "*"}), statement["Sid"]
        assert not any(a.endswith("*") for a in _as_list(statement["Action"])), statement["Sid"]
        if statement["Sid"] != "KeyAdministrationThroughIam":
            assert "Condition" in statement, statement["Sid"]
    admin = next(s for s in key["Properties"]["KeyPolicy"]["Statement"]
                 if s["Sid"] == "KeyAdministrationThroughIam")
    assert not {"kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"} & set(admin["Action"])
    logs = template["Resources"]["LogGroup"]["Properties"]
    assert logs["KmsKeyId"] == {"Fn::GetAtt": ["StackKey", "Arn"]}
    assert template["Resources"]["Repository"]["Properties"]["EncryptionConfiguration"][
        "EncryptionType"] == "KMS"
    for name in ("StackKey", "LogGroup", "Repository"):
        assert template["Resources"][name]["DeletionPolicy"] == "Retain", name
        assert template["Resources"][name]["UpdateReplacePolicy"] == "Retain", name
    [(_, cluster)] = _resources(template, "AWS::ECS::Cluster")
    assert {"Name": "containerInsights", "Value": "enabled"} in cluster["ClusterSettings"]


def test_people_get_personal_certificates_for_client_auth_only(template: dict) -> None:
    policy = template["Resources"]["PersonalCertificatePolicy"]
    assert policy["Condition"] == "HasPrivateCa"
    statements = {s["Sid"]: s for s in _statements(policy["Properties"]["PolicyDocument"])}
    issue = statements["IssueClientAuthCertificates"]
    assert issue["Action"] == "acm-pca:IssueCertificate"
    assert issue["Resource"] == {"Ref": "PrivateCaArn"}
    assert issue["Condition"]["StringEquals"]["acm-pca:TemplateArn"]["Fn::Sub"].endswith(
        "template/EndEntityClientAuthCertificate/V1")
    from preassign.cluster.identity import CLIENT_AUTH_TEMPLATE

    assert CLIENT_AUTH_TEMPLATE in issue["Condition"]["StringEquals"]["acm-pca:TemplateArn"][
        "Fn::Sub"]
    output = template["Outputs"]["ClientIdentityPolicyArn"]["Value"]
    assert output == {"Fn::If": ["HasPrivateCa", {"Ref": "PersonalCertificatePolicy"},
                                 {"Ref": "InterimIdentityPolicy"}]}


def test_launching_needs_no_register_task_definition(template: dict) -> None:
    actions = {a for _, s in policy_statements(template) for a in _as_list(s["Action"])}
    assert "ecs:RegisterTaskDefinition" not in actions
    assert "ecs:DeregisterTaskDefinition" not in actions
    statements = {s["Sid"]: s for s in _statements(
        template["Resources"]["LauncherPolicy"]["Properties"]["PolicyDocument"])}
    run = statements["RunTheStacksTaskDefinitions"]
    assert run["Resource"] == [{"Ref": "SchedulerTaskDefinition"}, {"Ref": "WorkerTaskDefinition"}]
    assert run["Condition"] == {"ArnEquals": {"ecs:cluster": {"Fn::GetAtt": ["EcsCluster", "Arn"]}}}
    runs = [s for _, s in policy_statements(template) if "ecs:RunTask" in _as_list(s["Action"])]
    for statement in runs:
        assert "*" not in str(statement["Resource"]), statement["Sid"]


def test_scheduled_run(template: dict) -> None:
    schedule = template["Resources"]["JobSchedule"]["Properties"]
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
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env["PREASSIGN_LAKE"] == {"Fn::Sub": "s3://${LakeBucket}/${LakePrefix}/extracted"}
    assert env["PREASSIGN_OUTPUT"] == {"Fn::Sub": "s3://${OutputBucket}/${OutputPrefix}"}


def test_extraction_in_the_stack(template: dict) -> None:
    resources = template["Resources"]
    definition = resources["ExtractTaskDefinition"]
    assert definition["Condition"] == "HasExtract"
    props = definition["Properties"]
    assert props["TaskRoleArn"] == {"Fn::GetAtt": ["ExtractRole", "Arn"]}
    assert props["ExecutionRoleArn"] == {"Fn::GetAtt": ["ExtractExecutionRole", "Arn"]}
    [container] = props["ContainerDefinitions"]
    assert container["Command"][:4] == ["preassign", "extract", "--cluster", "local"]
    lake = container["Command"][container["Command"].index("--lake") + 1]
    assert lake == {"Fn::Sub": "s3://${LakeBucket}/${LakePrefix}/extracted"}
    # The password comes from Secrets Manager through ECS, never in the definition.
    assert container["Secrets"] == [{"Name": "PREASSIGN_SOURCE_PASSWORD",
                                     "ValueFrom": {"Fn::Sub": "${SourceDbSecretArn}:password::"}}]
    from preassign.dbsecurity import SOURCE_PASSWORD_ENV, check_source_transport

    assert container["Secrets"][0]["Name"] == SOURCE_PASSWORD_ENV
    [url] = [e["Value"]["Fn::Sub"] for e in container["Environment"]
             if e["Name"] == "PREASSIGN_SOURCE_URL"]
    concrete = url.replace("${SourceDbUser}", "preassign").replace(
        "${SourceDbHost}", "snacks.cluster-ro-x.eu-west-1.rds.amazonaws.com").replace(
        "${SourceDbPort}", "3306").replace("${SourceDbName}", "snacks")
    from sqlalchemy.engine import make_url

    assert make_url(concrete).password is None
    check_source_transport(concrete)  # TLS with a CA: accepted without --insecure-db
    assert "rds-global-bundle.pem" in url
    # Its own schedule, role and security group.
    schedule = resources["ExtractSchedule"]["Properties"]
    assert schedule["Target"]["EcsParameters"]["TaskDefinitionArn"] == {"Ref": "ExtractTaskDefinition"}
    assert schedule["Target"]["EcsParameters"]["NetworkConfiguration"]["AwsvpcConfiguration"] == {
        "Subnets": {"Ref": "PrivateSubnetIds"},
        "SecurityGroups": [{"Fn::GetAtt": ["ExtractSecurityGroup", "GroupId"]}],
        "AssignPublicIp": "DISABLED"}
    assert schedule["State"] == {"Ref": "ExtractScheduleState"}
    assert template["Parameters"]["ExtractScheduleState"]["Default"] == "DISABLED"


def _containers(template: dict) -> Iterator[tuple[str, dict]]:
    for name, props in _resources(template, "AWS::ECS::TaskDefinition"):
        for container in props["ContainerDefinitions"]:
            yield name, container


def test_task_definitions_are_hardened(template: dict) -> None:
    names = {}
    for name, container in _containers(template):
        names[name] = container["Name"]
        assert container["User"] == "1000:1000", name
        assert container["HealthCheck"]["Command"] == ["CMD", "/usr/local/bin/preassign-healthcheck"]
        assert container["Image"]["Fn::Sub"].endswith("/${Repository}:${ImageTag}"), name
        mounts = {m["ContainerPath"] for m in container["MountPoints"]}
        assert mounts == {"/home/dask", "/tmp"}, name
        expected = ({"Fn::If": ["ExecEnabled", False, True]} if name == "SchedulerTaskDefinition"
                    else True)
        assert container["ReadonlyRootFilesystem"] == expected, name
        assert container["LogConfiguration"]["Options"]["awslogs-group"] == {"Ref": "LogGroup"}
        assert "awslogs-create-group" not in container["LogConfiguration"]["Options"]
    assert names["SchedulerTaskDefinition"] == "dask-scheduler"
    assert names["WorkerTaskDefinition"] == "dask-worker"
    for role in ("Scheduler", "Worker"):
        props = template["Resources"][f"{role}TaskDefinition"]["Properties"]
        assert props["TaskRoleArn"] == {"Fn::GetAtt": ["TaskRole", "Arn"]}
        [container] = props["ContainerDefinitions"]
        env = {e["Name"]: e["Value"] for e in container["Environment"]}
        assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
        assert env["PREASSIGN_TLS_SECRET_ARN"] == {"Ref": "TlsSecret"}
        # The container's size is the task's, which the client's settings must match.
        assert container["Cpu"] == props["Cpu"] and container["Memory"] == props["Memory"]


def test_task_definition_defaults_match_the_cluster_defaults(template: dict) -> None:
    fargate = BUILTIN_DEFAULTS["fargate"]
    parameters = template["Parameters"]
    assert parameters["SchedulerCpu"]["Default"] == fargate["scheduler_cpu"]
    assert parameters["SchedulerMemory"]["Default"] == fargate["scheduler_mem"]
    assert parameters["WorkerCpu"]["Default"] == fargate["worker_cpu"]
    assert parameters["WorkerMemory"]["Default"] == fargate["worker_mem"]
    assert parameters["CpuArchitecture"]["Default"] == fargate["cpu_architecture"]
    assert parameters["EnableExec"]["Default"] == str(fargate["enable_exec"]).lower()


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
    [base] = [a for k, a in docker if k == "FROM"]
    image, _, digest = base.partition("@")
    assert image == "python:3.11-slim"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), base


def test_dockerfile_installs_only_from_the_lock(docker: list[tuple[str, str]]) -> None:
    installs = _pip_installs(docker)
    assert installs == [
        ["pip", "install", "--no-deps", "--require-hashes", "-r", "image.lock"],
        ["pip", "install", "--no-deps", "--no-build-isolation", "."],
    ]
    copies = [a for k, a in docker if k == "COPY"]
    assert "cluster/image.lock ./" in copies
    lock_copy = copies.index("cluster/image.lock ./")
    assert lock_copy < copies.index("preassign ./preassign")
    assert any("pip check" in a for k, a in docker if k == "RUN")
    assert (REPO / "requirements.lock").is_file()


def _pins(text: str) -> dict[str, str]:
    return {name.lower(): version for name, version in
            re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", text, re.M)}


def test_image_lock_is_requirements_lock_with_hashes() -> None:
    # Same versions as requirements.lock (the client's), so open_client's version check
    # passes; plus the build tools; every requirement with hashes. Regenerate with the
    # command at the top of cluster/image.lock after changing requirements.lock.
    text = IMAGE_LOCK.read_text()
    image, runtime = _pins(text), _pins((REPO / "requirements.lock").read_text())
    assert {k: v for k, v in image.items() if k not in ("setuptools", "wheel")} == runtime
    assert {"setuptools", "wheel"} <= set(image)
    blocks = re.split(r"\n(?=[A-Za-z0-9_.\-]+==)", text.split("\n", 2)[2])
    for block in blocks:
        if "==" in block.split("\n", 1)[0]:
            assert "--hash=sha256:" in block, block.split("\n", 1)[0]


def test_dockerfile_health_check_and_volumes(docker: list[tuple[str, str]]) -> None:
    [health] = [a for k, a in docker if k == "HEALTHCHECK"]
    assert health.endswith('CMD ["/usr/local/bin/preassign-healthcheck"]')
    runs = " ".join(a for k, a in docker if k == "RUN")
    assert "ln -sf preassign-entrypoint /usr/local/bin/preassign-healthcheck" in runs
    assert ("VOLUME", '["/home/dask", "/tmp"]') in docker
    # The dashboard is not exposed; the Dask ports are.
    [exposed] = [a.split() for k, a in docker if k == "EXPOSE"]
    assert "8787" not in exposed and {"8786", "8788", "8789"} <= set(exposed)


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for our allowlist: the last matching pattern decides."""
    import fnmatch

    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        candidates = [path] + [path.rsplit("/", i)[0] for i in range(1, path.count("/") + 1)]
        if any(fnmatch.fnmatch(c, body.rstrip("/")) or
               (body.startswith("**/") and fnmatch.fnmatch(c.rsplit("/", 1)[-1], body[3:]))
               for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_build_context_to_what_the_image_needs(
    docker: list[tuple[str, str]]
) -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = [s for a in (a for k, a in docker if k == "COPY")
               for s in a.replace("--chmod=0755 ", "").split()[:-1]]
    for source in sources:
        assert not _dockerignore_excludes(source, patterns), source
    for inside in ("preassign/cluster/defaults.yaml", "preassign/sql/schema_mysql.sql"):
        assert not _dockerignore_excludes(inside, patterns), inside
    for private in (".venv/bin/python", ".git/config", "data/lake/_lake.json",
                    "notebooks/x.ipynb", "tests/unit/test_x.py", "cluster/tls/key.pem",
                    "preassign/__pycache__/x.pyc", "preassign/secret.pem", ".env",
                    "preassign/.env", "cluster/tls/make-certs.sh"):
        assert _dockerignore_excludes(private, patterns), private


def test_dockerfile_runs_as_non_root(docker: list[tuple[str, str]]) -> None:
    users = [a for k, a in docker if k == "USER"]
    assert users, "no USER instruction: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    last_user = max(i for i, (k, _) in enumerate(docker) if k == "USER")
    assert all(k not in ("RUN",) for k, _ in docker[last_user:]), "RUN after USER"


def test_dockerfile_provides_the_dask_commands(docker: list[tuple[str, str]]) -> None:
    runs = " ".join(a for k, a in docker if k == "RUN")
    for name in ("dask-scheduler", "dask-worker", "preassign-healthcheck"):
        assert f"ln -sf preassign-entrypoint /usr/local/bin/{name}" in runs
    assert ("ENTRYPOINT", '["/usr/local/bin/preassign-entrypoint"]') in docker
    assert any(a.endswith("cluster/entrypoint.sh /usr/local/bin/preassign-entrypoint")
               for k, a in docker if k == "COPY")


# ----------------------------------------------------------------------------- docs = stack


def test_stack_defaults_from_the_templates_outputs(template: dict, tmp_path: Path) -> None:
    # What cluster/README.md tells people to run: the stack's description -> a defaults
    # file. Every output it reads exists in the template, and the result is a valid,
    # complete Fargate configuration.
    from preassign.cluster.config import (
        ClusterSpec,
        check_stack_settings,
        load_defaults,
        resolve_settings,
        stack_defaults,
    )
    from tests.support.cluster import STACK

    values = {
        "ClusterArn": STACK["cluster_arn"], "VpcId": STACK["vpc"],
        "SubnetIds": ",".join(STACK["subnets"]), "SecurityGroupId": STACK["security_groups"][0],
        "ExecutionRoleArn": STACK["execution_role_arn"], "TaskRoleArn": STACK["task_role_arn"],
        "LogGroupName": STACK["log_group"], "TlsSecretArn": STACK["tls_secret_arn"],
        "SchedulerTaskDefinitionArn": STACK["scheduler_task_definition_arn"],
        "WorkerTaskDefinitionArn": STACK["worker_task_definition_arn"],
        "RepositoryUri": STACK["image"].rsplit(":", 1)[0],
        "ServerCaParameterName": "/preassign/preassign/server-ca",
        "ClientTlsSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:c-AbCdEf",
    }
    assert set(values) <= set(template["Outputs"])
    parameters = {name: str(p.get("Default", "")) for name, p in template["Parameters"].items()}
    parameters["ImageTag"] = STACK["image"].rsplit(":", 1)[1]
    description = {
        "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in values.items()],
        "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
    }
    config = stack_defaults(description)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    load_defaults(path)  # only known keys
    settings = resolve_settings(ClusterSpec("fargate", config_path=path))
    check_stack_settings(settings)
    for key in ("image", "cluster_arn", "task_role_arn", "scheduler_task_definition_arn",
                "worker_task_definition_arn", "tls_secret_arn"):
        assert settings[key] == STACK[key], key
    assert config["tls"] == {"server_ca_parameter": "/preassign/preassign/server-ca",
                             "client_secret_arn": values["ClientTlsSecretArn"]}
    del description["Outputs"][-1]
    with pytest.raises(ValueError, match="ServerCaParameterName"):
        stack_defaults({**description, "Outputs": description["Outputs"][:-1]})
