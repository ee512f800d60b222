#!/bin/sh
# Entry point of the preassign image, and the dask-scheduler / dask-worker commands.
#
# As the image's ENTRYPOINT it runs the task's command ("$@") after fetching the TLS files:
# when PREASSIGN_TLS_SECRET_ARN is set, it reads that Secrets Manager secret (a JSON object
# with PEM strings "ca", "cert" and "key") with the task role and writes ca.pem, cert.pem
# and key.pem, mode 600, to PREASSIGN_TLS_DIR (default ~/.preassign/tls). The key never
# appears in RunTask parameters, the task definition or the image.
#
# Installed as /usr/local/bin/dask-scheduler and /usr/local/bin/dask-worker (symlinks) it
# runs "dask scheduler" / "dask worker" with the same arguments. distributed 2026.6 removed
# those two executables, and dask-cloudprovider's FargateCluster still starts its tasks
# with them.
#
# Installed as /usr/local/bin/preassign-healthcheck it is the container health check (the
# image's HEALTHCHECK and the stack's task definitions): it finds the container's Dask
# scheduler or worker (or takes PREASSIGN_HEALTHCHECK_PID) and exits 0 only while it
# listens on its port (--port, default 8786, or --nanny-port). It reads /proc only: no connection, so no TLS handshake noise in the
# logs, and no secret is fetched. Other commands (the scheduled run, the extraction) are
# healthy while they run.
set -eu

healthcheck() {
    python - <<'PY'
import os
import sys


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return None


def role_of(args):
    return next((a for a in args[1:4] if a in ("scheduler", "worker")), None)


given = os.environ.get("PREASSIGN_HEALTHCHECK_PID")
if given:
    args = cmdline(given)
    if args is None:
        sys.exit(f"preassign-healthcheck: process {given} is gone")
    candidates = [args]
else:  # the first Dask scheduler or worker of the container, whatever PID 1 is
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    candidates = [a for a in map(cmdline, pids) if a and role_of(a)][:1]
if not candidates or role_of(candidates[0]) is None:
    sys.exit(0)  # the scheduled run or the extraction: healthy while it runs
args = candidates[0]
role = role_of(args)
flag, port = ("--port", 8786) if role == "scheduler" else ("--nanny-port", None)
if flag in args[:-1]:
    port = int(args[args.index(flag) + 1])
if port is None:
    sys.exit(0)
wanted = f"{port:04X}"
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        with open(table) as f:
            rows = [line.split() for line in f.readlines()[1:]]
    except OSError:
        continue
    if any(r[1].rsplit(":", 1)[1] == wanted and r[3] == "0A" for r in rows):
        sys.exit(0)
sys.exit(f"preassign-healthcheck: the {role} does not listen on port {port}")
PY
}

if [ "$(basename "$0")" = "preassign-healthcheck" ]; then
    healthcheck
    exit 0
fi

fetch_tls() {
    python - <<'PY'
import json
import os
import sys

import botocore.session

arn = os.environ["PREASSIGN_TLS_SECRET_ARN"]
tls_dir = os.environ.get("PREASSIGN_TLS_DIR") or os.path.expanduser("~/.preassign/tls")
region = arn.split(":")[3] if arn.startswith("arn:") and arn.count(":") >= 6 else None
client = botocore.session.get_session().create_client("secretsmanager", region_name=region)
try:
    value = json.loads(client.get_secret_value(SecretId=arn)["SecretString"])
except Exception as e:  # name the secret and the fix; the traceback adds nothing here
    sys.exit(f"preassign: cannot read TLS secret {arn}: {e}")
missing = [k for k in ("ca", "cert", "key") if not isinstance(value.get(k), str) or not value[k].strip()]
if missing:
    sys.exit(
        f"preassign: TLS secret {arn} has no {', '.join(missing)}; create the files with "
        f"cluster/tls/make-certs.sh --upload {arn}"
    )
os.makedirs(tls_dir, mode=0o700, exist_ok=True)
for name in ("ca", "cert", "key"):
    path = os.path.join(tls_dir, name + ".pem")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value[name])
    os.chmod(path, 0o600)
print(f"preassign: TLS files from {arn} written to {tls_dir}", file=sys.stderr)
PY
}

if [ -n "${PREASSIGN_TLS_SECRET_ARN:-}" ] && [ -z "${PREASSIGN_TLS_FETCHED:-}" ]; then
    fetch_tls
    PREASSIGN_TLS_FETCHED=1
    export PREASSIGN_TLS_FETCHED
fi

case "$(basename "$0")" in
    dask-scheduler) exec dask scheduler "$@" ;;
    dask-worker) exec dask worker "$@" ;;
esac

if [ "$#" -eq 0 ]; then
    echo "preassign-entrypoint: no command given" >&2
    exit 64
fi
exec "$@"
