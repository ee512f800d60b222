"""Tests of preassign.cluster.preflight against moto's S3 (no AWS)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from preassign.cluster.preflight import (
    Finding,
    PreflightSettings,
    check_buckets,
    main,
    stack_settings,
)
from preassign.errors import InfrastructureError, UsageError

moto = pytest.importorskip("moto")


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    import botocore.session

    with moto.mock_aws():
        session = botocore.session.get_session()
        yield {"s3": session.create_client("s3", region_name="eu-west-1"),
               "kms": session.create_client("kms", region_name="eu-west-1")}


def _make_bucket(s3: Any, name: str) -> None:
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})


def _harden(s3: Any, name: str, key_arn: str) -> None:
    s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True})
    s3.put_bucket_ownership_controls(Bucket=name, OwnershipControls={
        "Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]})
    s3.put_bucket_policy(Bucket=name, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyPlainHttp", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}))
    s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": [{
        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms",
                                               "KMSMasterKeyID": key_arn},
        "BucketKeyEnabled": True}]})
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})


def _settings(key: str, **changes: Any) -> PreflightSettings:
    values = {"lake_bucket": "acme-lake", "lake_prefix": "snacks", "output_bucket": "acme-out",
              "output_prefix": "preassign/runs", "scratch_prefix": "preassign/scratch",
              "kms_key_arns": (key,)}
    values.update(changes)
    return PreflightSettings(**values)


def _failed(findings: list[Finding]) -> dict[tuple[str, str], str]:
    return {(f.subject, f.check): f.detail for f in findings if not f.ok}


def test_hardened_buckets_pass(aws: dict) -> None:
    key = aws["kms"].create_key()["KeyMetadata"]["Arn"]
    for bucket in ("acme-lake", "acme-out"):
        _make_bucket(aws["s3"], bucket)
        _harden(aws["s3"], bucket, key)
    findings = check_buckets(_settings(key), s3=aws["s3"])
    assert _failed(findings) == {}
    checks = {(f.subject, f.check) for f in findings}
    for bucket in ("acme-lake", "acme-out"):
        for check in ("block public access", "object ownership", "TLS only", "SSE-KMS",
                      "S3 Bucket Key", "versioning"):
            assert (bucket, check) in checks
    assert ("prefixes", "separate") in checks


def test_default_bucket_fails_every_check(aws: dict) -> None:
    key = aws["kms"].create_key()["KeyMetadata"]["Arn"]
    _make_bucket(aws["s3"], "acme-lake")
    findings = check_buckets(_settings(key, output_bucket="acme-lake"), s3=aws["s3"])
    failed = _failed(findings)
    assert set(failed) == {("acme-lake", c) for c in (
        "block public access", "object ownership", "TLS only", "SSE-KMS", "versioning")}
    assert "put-public-access-block --bucket acme-lake" in failed[("acme-lake", "block public access")]
    assert "aws:SecureTransport" in failed[("acme-lake", "TLS only")]
    assert "put-bucket-versioning" in failed[("acme-lake", "versioning")]
    # One bucket for lake and outputs is checked once.
    assert sum(f.check == "versioning" for f in findings) == 1


def test_sse_s3_and_foreign_key_and_aws_managed_key_fail(aws: dict) -> None:
    s3, kms = aws["s3"], aws["kms"]
    key = kms.create_key()["KeyMetadata"]["Arn"]
    other = kms.create_key()["KeyMetadata"]["Arn"]
    _make_bucket(s3, "acme-lake")
    _harden(s3, "acme-lake", key)
    cases = {
        "AES256": ({"SSEAlgorithm": "AES256"}, "default encryption is AES256"),
        "other key": ({"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": other},
                      "is not among BucketKmsKeyArns"),
        "aws/s3": ({"SSEAlgorithm": "aws:kms"}, "AWS-managed key aws/s3"),
    }
    for default, message in cases.values():
        s3.put_bucket_encryption(Bucket="acme-lake", ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": default}]})
        failed = _failed(check_buckets(_settings(key, output_bucket="acme-lake"), s3=s3))
        assert message in failed[("acme-lake", "SSE-KMS")], default


def test_key_given_by_id_matches(aws: dict) -> None:
    s3, kms = aws["s3"], aws["kms"]
    metadata = kms.create_key()["KeyMetadata"]
    _make_bucket(s3, "acme-lake")
    _harden(s3, "acme-lake", metadata["KeyId"])
    failed = _failed(check_buckets(_settings(metadata["Arn"], output_bucket="acme-lake"), s3=s3))
    assert failed == {}


@pytest.mark.parametrize(
    "statement",
    [
        {"Effect": "Allow"},
        {"Principal": {"AWS": "arn:aws:iam::123456789012:root"}},
        {"Action": "s3:GetObject"},
        {"Resource": ["arn:aws:s3:::acme-lake/*"]},
        {"Condition": {"Bool": {"aws:SecureTransport": "true"}}},
    ],
    ids=["allow", "one-principal", "one-action", "objects-only", "wrong-condition"],
)
def test_weak_tls_policies_fail(aws: dict, statement: dict) -> None:
    s3 = aws["s3"]
    key = aws["kms"].create_key()["KeyMetadata"]["Arn"]
    _make_bucket(s3, "acme-lake")
    _harden(s3, "acme-lake", key)
    base = {"Effect": "Deny", "Principal": "*", "Action": "s3:*",
            "Resource": ["arn:aws:s3:::acme-lake", "arn:aws:s3:::acme-lake/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}}
    base.update(statement)
    s3.put_bucket_policy(Bucket="acme-lake", Policy=json.dumps(
        {"Version": "2012-10-17", "Statement": [base]}))
    failed = _failed(check_buckets(_settings(key, output_bucket="acme-lake"), s3=s3))
    assert set(failed) == {("acme-lake", "TLS only")}


@pytest.mark.parametrize(
    ("changes", "overlap"),
    [
        ({"scratch_prefix": "preassign/runs/scratch"}, "OutputPrefix"),
        ({"scratch_prefix": "preassign/runs"}, "ScratchPrefix"),
        ({"output_bucket": "acme-lake", "output_prefix": "snacks/runs"}, "LakePrefix"),
    ],
    ids=["scratch-inside-outputs", "same-prefix", "outputs-inside-lake"],
)
def test_overlapping_prefixes_fail(changes: dict, overlap: str) -> None:
    class NoS3:
        def __getattr__(self, name: str) -> Any:
            return lambda **kw: {}

    findings = check_buckets(_settings("arn:aws:kms:eu-west-1:1:key/k", **changes), s3=NoS3())
    [prefixes] = [f for f in findings if f.subject == "prefixes"]
    assert not prefixes.ok and overlap in prefixes.detail


def test_similar_prefixes_do_not_overlap() -> None:
    class NoS3:
        def __getattr__(self, name: str) -> Any:
            return lambda **kw: {}

    settings = _settings("k", lake_bucket="b", output_bucket="b", lake_prefix="lake/v1",
                         output_prefix="lake/v10", scratch_prefix="lake/v1-scratch")
    [prefixes] = [f for f in check_buckets(settings, s3=NoS3()) if f.subject == "prefixes"]
    assert prefixes.ok


def test_missing_bucket_is_an_infrastructure_error(aws: dict) -> None:
    with pytest.raises(InfrastructureError, match="cannot read the configuration of bucket acme-lake"):
        check_buckets(_settings("k"), s3=aws["s3"])


def test_command_line(aws: dict, capsys: pytest.CaptureFixture[str]) -> None:
    key = aws["kms"].create_key()["KeyMetadata"]["Arn"]
    _make_bucket(aws["s3"], "acme-lake")
    _harden(aws["s3"], "acme-lake", key)
    argv = ["--lake-bucket", "acme-lake", "--lake-prefix", "snacks", "--output-bucket",
            "acme-lake", "--output-prefix", "runs", "--scratch-prefix", "scratch",
            "--kms-key-arn", key]
    assert main(argv, s3=aws["s3"]) == 0
    out = capsys.readouterr().out
    assert "PASS  acme-lake  versioning: enabled" in out
    assert out.splitlines()[-1] == "preflight: 7 checks, none failing"
    aws["s3"].put_bucket_versioning(Bucket="acme-lake",
                                    VersioningConfiguration={"Status": "Suspended"})
    assert main(argv, s3=aws["s3"]) == 1
    assert "FAIL  acme-lake  versioning: Suspended" in capsys.readouterr().out
    assert main(["--lake-bucket", "x"], s3=aws["s3"]) == UsageError.exit_code


def test_stack_settings_from_parameters() -> None:
    class FakeCloudFormation:
        def describe_stacks(self, StackName: str) -> dict:
            assert StackName == "preassign"
            values = {"LakeBucket": "l", "LakePrefix": "lake", "OutputBucket": "o",
                      "OutputPrefix": "runs", "ScratchPrefix": "scratch",
                      "BucketKmsKeyArns": "arn:aws:kms:eu-west-1:1:key/a, arn:aws:kms:eu-west-1:1:key/b"}
            return {"Stacks": [{"Parameters": [{"ParameterKey": k, "ParameterValue": v}
                                               for k, v in values.items()]}]}

    settings = stack_settings("preassign", cloudformation=FakeCloudFormation())
    assert settings == PreflightSettings("l", "lake", "o", "runs", "scratch",
                                         ("arn:aws:kms:eu-west-1:1:key/a",
                                          "arn:aws:kms:eu-west-1:1:key/b"))
