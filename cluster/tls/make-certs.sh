#!/bin/sh
# Make the TLS files a preassign Dask cluster uses for mutual TLS, and optionally upload
# them to the stack's Secrets Manager secret (stack output TlsSecretArn).
#
#   cluster/tls/make-certs.sh [--dir DIR] [--days N] [--upload SECRET_ARN] [--force]
#
# Writes DIR/ca.pem, DIR/cert.pem and DIR/key.pem (default DIR: ~/.preassign/tls, where
# cluster/defaults.yaml looks). One throw-away CA signs one certificate that the client,
# the scheduler and the workers all present; every side checks the peer against the CA.
# The CA key is deleted once the certificate is signed, so nobody can mint more: to rotate,
# run this again with --force --upload and restart the clusters.
# Needs openssl; --upload also needs python3 and the aws CLI.
set -eu

dir="${HOME}/.preassign/tls"
days=365
upload=""
force=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --dir) dir="$2"; shift 2 ;;
        --days) days="$2"; shift 2 ;;
        --upload) upload="$2"; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "make-certs.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done

if [ -e "$dir/key.pem" ] && [ -z "$force" ]; then
    echo "make-certs.sh: $dir/key.pem exists; pass --force to replace the TLS files" >&2
    exit 1
fi

umask 077
mkdir -p "$dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT INT TERM

cat > "$work/leaf.ext" <<'EXT'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:dask-internal
EXT

openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$work/ca-key.pem" -out "$work/ca.pem" -days "$days" -sha256 \
    -subj "/CN=preassign dask CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$work/key.pem" -out "$work/cert.csr" -subj "/CN=dask-internal" 2>/dev/null
openssl x509 -req -in "$work/cert.csr" -CA "$work/ca.pem" -CAkey "$work/ca-key.pem" \
    -CAcreateserial -out "$work/cert.pem" -days "$days" -sha256 \
    -extfile "$work/leaf.ext" 2>/dev/null
openssl verify -CAfile "$work/ca.pem" "$work/cert.pem" >/dev/null

for name in ca cert key; do
    cp "$work/$name.pem" "$dir/$name.pem"
    chmod 600 "$dir/$name.pem"
done
echo "TLS files written to $dir (valid $days days)"

if [ -n "$upload" ]; then
    python3 - "$dir" > "$work/secret.json" <<'PY'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
print(json.dumps({n: (d / f"{n}.pem").read_text() for n in ("ca", "cert", "key")}))
PY
    aws secretsmanager put-secret-value --secret-id "$upload" \
        --secret-string "file://$work/secret.json" >/dev/null
    echo "Uploaded to $upload"
fi
