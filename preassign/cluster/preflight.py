"""Preflight: check the buckets the stack reads and writes before rolling it out.

The CloudFormation stack grants its roles access to prefixes of two buckets it does not
own (``LakeBucket``, ``OutputBucket``; they may be one bucket). What protects the data
at rest and in transit is set on those buckets, so a rollout checks, per bucket:

* **Block Public Access**: all four settings on (no public ACL or policy can take effect).
* **Object ownership**: ``BucketOwnerEnforced`` (ACLs disabled; the bucket policy and IAM
  alone decide access).
* **TLS only**: a bucket policy statement denying every S3 action on the bucket and its
  objects when ``aws:SecureTransport`` is false.
* **SSE-KMS**: default encryption ``aws:kms`` (or ``aws:kms:dsse``) with one of the
  customer-managed keys named to the stack (``BucketKmsKeyArns``), whose use the roles
  may ask for only through S3 (``kms:ViaService``); S3 Bucket Keys on (fewer KMS calls).
* **Versioning**: enabled, so an overwrite or delete by a role can be undone.

and, across buckets, that the stack's prefixes do not overlap: notebook clusters write
``ScratchPrefix``, only the scheduled run writes ``OutputPrefix``, only the extraction
writes ``LakePrefix``.

Command line: ``python -m preassign.cluster.preflight --stack NAME`` (the buckets, prefixes
and keys are read from the stack's parameters) or with the values given as options; it
prints one line per check and exits 1 if any failed. The caller needs read access to the
buckets' configuration (``s3:GetBucketPolicy``, ``s3:GetEncryptionConfiguration``,
``s3:GetBucketVersioning``, ``s3:GetBucketPublicAccessBlock``,
``s3:GetBucketOwnershipControls``) and, with ``--stack``,
``cloudformation:DescribeStacks``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import InfrastructureError, PreassignError, UsageError

__all__ = ["Finding", "PreflightSettings", "check_buckets", "main", "stack_settings"]

_PUBLIC_ACCESS_KEYS = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy",
                       "RestrictPublicBuckets")
_KMS_ALGORITHMS = ("aws:kms", "aws:kms:dsse")


@dataclasses.dataclass(frozen=True)
class Finding:
    """The result of one check.

    Attributes:
        subject: What was checked (a bucket name, or ``prefixes``).
        check: The check's name.
        ok: Whether it passed.
        detail: What was found, and for a failure how to fix it.
    """

    subject: str
    check: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        """One line: PASS/FAIL, subject, check, detail."""
        return f"{'PASS' if self.ok else 'FAIL'}  {self.subject}  {self.check}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class PreflightSettings:
    """What the stack was (or will be) deployed with.

    Attributes:
        lake_bucket: ``LakeBucket``.
        lake_prefix: ``LakePrefix``.
        output_bucket: ``OutputBucket``.
        output_prefix: ``OutputPrefix``.
        scratch_prefix: ``ScratchPrefix`` (in the output bucket).
        kms_key_arns: ``BucketKmsKeyArns``: the keys the buckets' default encryption uses.
    """

    lake_bucket: str
    lake_prefix: str
    output_bucket: str
    output_prefix: str
    scratch_prefix: str
    kms_key_arns: tuple[str, ...]


def _code(e: Exception) -> str:
    return str((getattr(e, "response", None) or {}).get("Error", {}).get("Code", ""))


def _call(s3: Any, method: str, bucket: str, missing: str) -> Any:
    """Call an S3 bucket API; None when the configuration is absent (``missing`` code)."""
    try:
        return getattr(s3, method)(Bucket=bucket)
    except Exception as e:
        if _code(e) == missing:
            return None
        if _code(e) in ("NoSuchBucket", "AccessDenied", "403", "404"):
            raise InfrastructureError(
                f"cannot read the configuration of bucket {bucket} ({_code(e)} on {method}); "
                "check the name and that you may read its configuration"
            ) from None
        raise


def _check_public_access(s3: Any, bucket: str) -> Finding:
    response = _call(s3, "get_public_access_block", bucket,
                     "NoSuchPublicAccessBlockConfiguration")
    config = (response or {}).get("PublicAccessBlockConfiguration", {})
    off = [k for k in _PUBLIC_ACCESS_KEYS if not config.get(k)]
    if not off:
        return Finding(bucket, "block public access", True, "all four settings on")
    return Finding(bucket, "block public access", False,
                   f"off: {', '.join(off)}; aws s3api put-public-access-block --bucket "
                   f"{bucket} --public-access-block-configuration "
                   + ",".join(f"{k}=true" for k in _PUBLIC_ACCESS_KEYS))


def _check_ownership(s3: Any, bucket: str) -> Finding:
    response = _call(s3, "get_bucket_ownership_controls", bucket,
                     "OwnershipControlsNotFoundError")
    rules = (response or {}).get("OwnershipControls", {}).get("Rules", [])
    owned = [r.get("ObjectOwnership") for r in rules]
    if owned == ["BucketOwnerEnforced"]:
        return Finding(bucket, "object ownership", True, "BucketOwnerEnforced (ACLs disabled)")
    return Finding(bucket, "object ownership", False,
                   f"{owned or 'not set'}; aws s3api put-bucket-ownership-controls --bucket "
                   f"{bucket} --ownership-controls Rules=[{{ObjectOwnership=BucketOwnerEnforced}}]")


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _denies_plain_http(statement: Mapping[str, Any], bucket: str) -> bool:
    if statement.get("Effect") != "Deny":
        return False
    principal = statement.get("Principal")
    if principal != "*" and principal != {"AWS": "*"}:
        return False
    actions = {str(a) for a in _as_list(statement.get("Action", []))}
    if not actions & {"s3:*", "*"}:
        return False
    resources = {str(r) for r in _as_list(statement.get("Resource", []))}
    arn = next((r.split(":::")[0] for r in resources if ":::" in r), "arn:aws:s3")
    if not {f"{arn}:::{bucket}", f"{arn}:::{bucket}/*"} <= resources:
        return False
    condition = statement.get("Condition", {})
    values = condition.get("Bool", {}).get("aws:SecureTransport")
    return [str(v).lower() for v in _as_list(values)] == ["false"]


def _check_tls_only(s3: Any, bucket: str) -> Finding:
    response = _call(s3, "get_bucket_policy", bucket, "NoSuchBucketPolicy")
    statements: list[Any] = []
    if response is not None:
        try:
            statements = _as_list(json.loads(response.get("Policy", "{}")).get("Statement", []))
        except (ValueError, AttributeError, TypeError):
            statements = []
    if any(isinstance(s, Mapping) and _denies_plain_http(s, bucket) for s in statements):
        return Finding(bucket, "TLS only", True, "the bucket policy denies s3:* without TLS")
    return Finding(bucket, "TLS only", False,
                   "no statement denying s3:* on the bucket and its objects when "
                   "aws:SecureTransport is false; add one to the bucket policy "
                   "(cluster/README.md, 'Bucket prerequisites')")


def _key_matches(configured: str, expected: Iterable[str]) -> bool:
    """Whether a bucket's KMSMasterKeyID (ARN, key id) names one of the expected keys."""
    for arn in expected:
        key_id = arn.rsplit("/", 1)[-1]
        if configured in (arn, key_id) or configured.endswith(f":key/{key_id}"):
            return True
    return False


def _check_encryption(s3: Any, bucket: str, keys: Sequence[str]) -> list[Finding]:
    response = _call(s3, "get_bucket_encryption", bucket,
                     "ServerSideEncryptionConfigurationNotFoundError")
    rules = (response or {}).get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
    rule = rules[0] if rules else {}
    default = rule.get("ApplyServerSideEncryptionByDefault", {})
    algorithm = default.get("SSEAlgorithm", "none")
    key = default.get("KMSMasterKeyID", "")
    fix = (f"aws s3api put-bucket-encryption --bucket {bucket} "
           "--server-side-encryption-configuration '{\"Rules\": [{"
           "\"ApplyServerSideEncryptionByDefault\": {\"SSEAlgorithm\": \"aws:kms\", "
           "\"KMSMasterKeyID\": \"<key ARN>\"}, \"BucketKeyEnabled\": true}]}'")
    if algorithm not in _KMS_ALGORITHMS:
        findings = [Finding(bucket, "SSE-KMS", False, f"default encryption is {algorithm}; {fix}")]
    elif not key:
        findings = [Finding(bucket, "SSE-KMS", False,
                            "aws:kms with the AWS-managed key aws/s3: its use cannot be limited "
                            f"to the stack's roles; use a customer-managed key: {fix}")]
    elif keys and not _key_matches(key, keys):
        findings = [Finding(bucket, "SSE-KMS", False,
                            f"key {key} is not among BucketKmsKeyArns ({', '.join(keys)}): the "
                            "roles could not use it; deploy the stack with this key's ARN")]
    else:
        findings = [Finding(bucket, "SSE-KMS", True, f"{algorithm} with {key}")]
    if algorithm in _KMS_ALGORITHMS:
        enabled = bool(rule.get("BucketKeyEnabled"))
        findings.append(Finding(bucket, "S3 Bucket Key", enabled,
                                "on" if enabled else "off: every object request calls KMS "
                                "(cost, throttling); set BucketKeyEnabled=true"))
    return findings


def _check_versioning(s3: Any, bucket: str) -> Finding:
    status = (_call(s3, "get_bucket_versioning", bucket, "") or {}).get("Status", "never enabled")
    if status == "Enabled":
        return Finding(bucket, "versioning", True, "enabled")
    return Finding(bucket, "versioning", False,
                   f"{status}; aws s3api put-bucket-versioning --bucket {bucket} "
                   "--versioning-configuration Status=Enabled (with a lifecycle rule expiring "
                   "noncurrent versions)")


def _inside(a: str, b: str) -> bool:
    """Whether prefix ``a`` equals ``b`` or lies inside it (whole path segments)."""
    return a == b or a.startswith(b.rstrip("/") + "/")


def _check_prefixes(settings: PreflightSettings) -> Finding:
    places = {
        "LakePrefix": (settings.lake_bucket, settings.lake_prefix),
        "OutputPrefix": (settings.output_bucket, settings.output_prefix),
        "ScratchPrefix": (settings.output_bucket, settings.scratch_prefix),
    }
    overlaps = [
        f"{a} s3://{ba}/{pa} and {b} s3://{bb}/{pb}"
        for i, (a, (ba, pa)) in enumerate(places.items())
        for b, (bb, pb) in list(places.items())[i + 1:]
        if ba == bb and (_inside(pa, pb) or _inside(pb, pa))
    ]
    if overlaps:
        return Finding("prefixes", "separate", False,
                       "overlapping: " + "; ".join(overlaps) + ": a role allowed to write one "
                       "could overwrite the other; choose prefixes that do not contain each other")
    return Finding("prefixes", "separate", True,
                   "lake, production outputs and scratch do not overlap")


def check_buckets(settings: PreflightSettings, *, s3: Any = None) -> list[Finding]:
    """Run every check on the stack's buckets.

    Args:
        settings: The stack's buckets, prefixes and keys.
        s3: A botocore ``s3`` client (tests); default one from this machine's credentials.

    Returns:
        The findings, the prefix check first, then per bucket (each bucket once).

    Raises:
        InfrastructureError: If a bucket does not exist or its configuration cannot be read.
    """
    if s3 is None:
        import botocore.session

        s3 = botocore.session.get_session().create_client("s3")
    findings = [_check_prefixes(settings)]
    for bucket in dict.fromkeys([settings.lake_bucket, settings.output_bucket]):
        findings.append(_check_public_access(s3, bucket))
        findings.append(_check_ownership(s3, bucket))
        findings.append(_check_tls_only(s3, bucket))
        findings.extend(_check_encryption(s3, bucket, settings.kms_key_arns))
        findings.append(_check_versioning(s3, bucket))
    return findings


def stack_settings(stack: str, *, cloudformation: Any = None) -> PreflightSettings:
    """Read the buckets, prefixes and keys from a deployed stack's parameters.

    Args:
        stack: The stack name or id.
        cloudformation: A botocore ``cloudformation`` client (tests).

    Returns:
        The settings the stack was deployed with.

    Raises:
        InfrastructureError: If the stack cannot be described.
        UsageError: If it lacks one of the parameters (another template).
    """
    if cloudformation is None:
        import botocore.session

        cloudformation = botocore.session.get_session().create_client("cloudformation")
    try:
        [description] = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    except Exception as e:
        raise InfrastructureError(f"cannot describe stack {stack} ({_code(e) or e})") from None
    values = {p["ParameterKey"]: p.get("ResolvedValue", p.get("ParameterValue", ""))
              for p in description.get("Parameters", [])}
    names = ("LakeBucket", "LakePrefix", "OutputBucket", "OutputPrefix", "ScratchPrefix",
             "BucketKmsKeyArns")
    missing = [n for n in names if n not in values]
    if missing:
        raise UsageError(f"stack {stack} has no parameter(s) {', '.join(missing)}; is it "
                         "deployed from cluster/cloudformation.yaml?")
    return PreflightSettings(
        lake_bucket=values["LakeBucket"], lake_prefix=values["LakePrefix"],
        output_bucket=values["OutputBucket"], output_prefix=values["OutputPrefix"],
        scratch_prefix=values["ScratchPrefix"],
        kms_key_arns=tuple(k.strip() for k in values["BucketKmsKeyArns"].split(",") if k.strip()),
    )


def main(argv: Sequence[str] | None = None, *, s3: Any = None,
         cloudformation: Any = None) -> int:
    """Run ``python -m preassign.cluster.preflight``.

    Args:
        argv: The arguments (default ``sys.argv[1:]``).
        s3: A botocore ``s3`` client (tests).
        cloudformation: A botocore ``cloudformation`` client (tests).

    Returns:
        0 when every check passed, 1 when one failed, else the error's exit code.
    """
    parser = argparse.ArgumentParser(
        prog="python -m preassign.cluster.preflight",
        description="Check the lake and output buckets before deploying or updating the "
                    "preassign stack (cluster/README.md).",
    )
    parser.add_argument("--stack", help="read the values below from this stack's parameters")
    for name in ("lake-bucket", "lake-prefix", "output-bucket", "output-prefix",
                 "scratch-prefix"):
        parser.add_argument(f"--{name}")
    parser.add_argument("--kms-key-arn", action="append", default=[],
                        help="a key of BucketKmsKeyArns (repeatable)")
    args = parser.parse_args(argv)
    try:
        if args.stack:
            settings = stack_settings(args.stack, cloudformation=cloudformation)
        else:
            given = {"lake_bucket": args.lake_bucket, "lake_prefix": args.lake_prefix,
                     "output_bucket": args.output_bucket, "output_prefix": args.output_prefix,
                     "scratch_prefix": args.scratch_prefix}
            if not all(given.values()) or not args.kms_key_arn:
                raise UsageError("give --stack, or all of --lake-bucket, --lake-prefix, "
                                 "--output-bucket, --output-prefix, --scratch-prefix and "
                                 "--kms-key-arn")
            settings = PreflightSettings(**given, kms_key_arns=tuple(args.kms_key_arn))
        findings = check_buckets(settings, s3=s3)
    except PreassignError as e:
        print(f"Error: {e}", file=sys.stderr)
        return e.exit_code
    for finding in findings:
        print(finding)
    failed = [f for f in findings if not f.ok]
    print(f"preflight: {len(findings)} checks, {len(failed) or 'none'} failing")
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover - the command line
    sys.exit(main())
