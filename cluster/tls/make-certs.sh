#!/bin/sh
# Make the TLS identities of a preassign Dask cluster and, optionally, upload them to the
# stack (cluster/README.md, "Identities"). Two identities, two CAs:
#
#   the tasks   a server identity (scheduler and workers), signed by the "server CA":
#               DIR/tasks/cert.pem, DIR/tasks/key.pem, and DIR/tasks/ca.pem, the CAs the
#               tasks trust (server CA + client CA). Goes to the stack's TLS secret, which
#               only the task role can read.
#   people      DIR/ca.pem (the server CA certificate, public: it checks the scheduler) and,
#               until an ACM Private CA issues personal certificates, one interim client
#               identity DIR/cert.pem, DIR/key.pem (client authentication only), signed by
#               a separate "client CA". Goes to the stack's client secret, which only roles
#               with the stack's ClientIdentityPolicy can read.
#
# Both CA keys are deleted once they have signed, so nobody can mint more; running this
# again with --force replaces both CAs, and every copy of the old identities stops working
# (offboarding: cluster/tls/make-certs.sh --force --stack NAME, then restart the clusters).
#
#   cluster/tls/make-certs.sh [--dir DIR] [--days N] [--client-days N] [--client-ca FILE]
#                             [--force] [--stack NAME | --upload-tasks SECRET_ARN
#                             [--upload-client SECRET_ARN] [--upload-ca PARAMETER_NAME]]
#
#   --dir DIR          where to write (default ~/.preassign/tls, where defaults.yaml looks)
#   --days N           validity of the server identity (default 365)
#   --client-days N    validity of the interim client identity (default 90)
#   --client-ca FILE   trust client certificates of this CA (the ACM Private CA certificate)
#                      and make no shared client identity
#   --stack NAME       upload everything to that stack (outputs TlsSecretArn,
#                      ClientTlsSecretArn, ServerCaParameterName) and delete DIR/tasks
#   --upload-*         the same with explicit ARNs / parameter name
# Needs openssl; uploading also needs python3 and the aws CLI.
set -eu

dir="${HOME}/.preassign/tls"
days=365
client_days=90
client_ca=""
stack=""
upload_tasks=""
upload_client=""
upload_ca=""
force=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --dir) dir="$2"; shift 2 ;;
        --days) days="$2"; shift 2 ;;
        --client-days) client_days="$2"; shift 2 ;;
        --client-ca) client_ca="$2"; shift 2 ;;
        --stack) stack="$2"; shift 2 ;;
        --upload-tasks) upload_tasks="$2"; shift 2 ;;
        --upload-client) upload_client="$2"; shift 2 ;;
        --upload-ca) upload_ca="$2"; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
        *) echo "make-certs.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done

if [ -n "$client_ca" ] && ! grep -q "BEGIN CERTIFICATE" "$client_ca" 2>/dev/null; then
    echo "make-certs.sh: --client-ca $client_ca holds no PEM certificate" >&2
    exit 2
fi
for existing in "$dir/key.pem" "$dir/ca.pem" "$dir/tasks/key.pem"; do
    if [ -e "$existing" ] && [ -z "$force" ]; then
        echo "make-certs.sh: $existing exists; pass --force to replace the TLS files" >&2
        exit 1
    fi
done

output() {  # output NAME: a stack output's value, empty if the stack has none of that name
    aws cloudformation describe-stacks --stack-name "$stack" \
        --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue" --output text
}
if [ -n "$stack" ]; then
    upload_tasks="$(output TlsSecretArn)"
    upload_ca="$(output ServerCaParameterName)"
    upload_client="$(output ClientTlsSecretArn)"
    [ "$upload_client" = "None" ] && upload_client=""
    if [ -z "$upload_tasks" ] || [ "$upload_tasks" = "None" ]; then
        echo "make-certs.sh: stack $stack has no TlsSecretArn output" >&2
        exit 1
    fi
    if [ -z "$upload_client" ] && [ -z "$client_ca" ]; then
        echo "make-certs.sh: stack $stack uses a private CA (no ClientTlsSecretArn output):" \
             "pass --client-ca with that CA's certificate" >&2
        exit 2
    fi
fi

umask 077
mkdir -p "$dir/tasks"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT INT TERM

new_ca() {  # new_ca NAME SUBJECT: a throw-away CA, key in $work only
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$work/$1-key.pem" -out "$work/$1.pem" -days "$days" -sha256 \
        -subj "$2" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}
new_leaf() {  # new_leaf NAME CA SUBJECT DAYS EKU
    cat > "$work/$1.ext" <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = $5
subjectAltName = DNS:dask-internal
EXT
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$work/$1-key.pem" -out "$work/$1.csr" -subj "$3" 2>/dev/null
    openssl x509 -req -in "$work/$1.csr" -CA "$work/$2.pem" -CAkey "$work/$2-key.pem" \
        -CAcreateserial -out "$work/$1.pem" -days "$4" -sha256 \
        -extfile "$work/$1.ext" 2>/dev/null
    openssl verify -CAfile "$work/$2.pem" "$work/$1.pem" >/dev/null
}

new_ca server-ca "/CN=preassign dask server CA"
new_leaf tasks server-ca "/CN=preassign-dask-tasks" "$days" "serverAuth, clientAuth"
if [ -n "$client_ca" ]; then
    cp "$client_ca" "$work/client-ca.pem"
else
    new_ca client-ca "/CN=preassign interim client CA"
    new_leaf client client-ca "/CN=preassign-interim-client" "$client_days" "clientAuth"
fi
rm -f "$work/server-ca-key.pem" "$work/client-ca-key.pem"   # nobody can mint more

cat "$work/server-ca.pem" "$work/client-ca.pem" > "$work/bundle.pem"
install_file() { cp "$1" "$2"; chmod 600 "$2"; }
install_file "$work/bundle.pem" "$dir/tasks/ca.pem"
install_file "$work/tasks.pem" "$dir/tasks/cert.pem"
install_file "$work/tasks-key.pem" "$dir/tasks/key.pem"
install_file "$work/server-ca.pem" "$dir/ca.pem"
if [ -z "$client_ca" ]; then
    install_file "$work/client.pem" "$dir/cert.pem"
    install_file "$work/client-key.pem" "$dir/key.pem"
    echo "TLS files written to $dir (server identity in $dir/tasks, valid $days days;" \
         "interim client identity valid $client_days days)"
else
    rm -f "$dir/cert.pem" "$dir/key.pem"
    echo "TLS files written to $dir (server identity in $dir/tasks, valid $days days;" \
         "client certificates of $client_ca are trusted)"
fi

secret_json() {  # secret_json DIR NAME...: {"name": PEM, ...}
    python3 - "$@" <<'PY'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
print(json.dumps({n: (d / f"{n}.pem").read_text() for n in sys.argv[2:]}))
PY
}
if [ -n "$upload_tasks" ]; then
    secret_json "$dir/tasks" ca cert key > "$work/tasks.json"
    aws secretsmanager put-secret-value --secret-id "$upload_tasks" \
        --secret-string "file://$work/tasks.json" >/dev/null
    rm -rf "$dir/tasks"   # only the tasks need the server key, and they read the secret
    echo "Uploaded the server identity to $upload_tasks (and removed $dir/tasks)"
fi
if [ -n "$upload_client" ] && [ -z "$client_ca" ]; then
    secret_json "$dir" cert key > "$work/client.json"
    aws secretsmanager put-secret-value --secret-id "$upload_client" \
        --secret-string "file://$work/client.json" >/dev/null
    echo "Uploaded the interim client identity to $upload_client"
fi
if [ -n "$upload_ca" ]; then
    aws ssm put-parameter --name "$upload_ca" --type String --overwrite \
        --value "file://$dir/ca.pem" >/dev/null
    echo "Published the server CA certificate in SSM parameter $upload_ca"
fi
