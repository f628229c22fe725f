#!/usr/bin/env bash
# Makes the local development CA and the certificates the local broker's TLS listener (AMQPS
# 127.0.0.1:5671) and the tests use, in $NEBULA_TEST_TLS_DIR (scripts/env.sh):
#   ca.pem, ca.key             "Nebula development CA" (EC P-256, 10 years)
#   server.pem, server.key     the broker's: DNS localhost, IP 127.0.0.1 (serverAuth), key
#                              readable by the rabbitmq user
#   client.pem, client.key     a device's client certificate (clientAuth), CN nebula-test-device
# For development and tests only: the CA key lies next to its certificate. A fleet's own CA and
# broker certificate go where README "Securing a fleet" says.
# Idempotent: does nothing when every file is there. Called by scripts/setup.sh, and by
# scripts/services.sh before it starts RabbitMQ.
set -euo pipefail
cd "$(dirname "$0")/.."
NEBULA_SCRIPT=dev-ca
# shellcheck source=scripts/env.sh
source scripts/env.sh
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

dir=$NEBULA_TEST_TLS_DIR
files=(ca.pem ca.key server.pem server.key client.pem client.key)
complete=yes
for file in "${files[@]}"; do [ -s "$dir/$file" ] || complete=no; done
command -v openssl >/dev/null || die "openssl not found: run scripts/setup.sh"
# Made anew a month before the leaf certificates expire (825 days), so the TLS tests never
# start failing on an old machine.
if [ "$complete" = yes ]; then
  valid=yes
  for file in server.pem client.pem; do
    openssl x509 -checkend 2592000 -noout -in "$dir/$file" >/dev/null 2>&1 || valid=no
  done
  [ "$valid" = no ] || exit 0
fi

say "making the development CA and certificates in $dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key "$work/ca.key"
openssl req -x509 -new -key "$work/ca.key" -sha256 -days 3650 -subj "/CN=Nebula development CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$work/ca.pem"
# sign NAME SUBJECT EXTENSIONS: a leaf certificate signed by the CA.
sign() {
  key "$work/$1.key"
  openssl req -new -key "$work/$1.key" -subj "$2" -out "$work/$1.csr"
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" "$3" >"$work/$1.ext"
  openssl x509 -req -in "$work/$1.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
    -sha256 -days 825 -extfile "$work/$1.ext" -out "$work/$1.pem" 2>/dev/null
}
sign server "/CN=localhost" "extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1"
sign client "/CN=nebula-test-device" "extendedKeyUsage=clientAuth"

as_root mkdir -p "$dir"
as_root chmod 755 "$dir"
# client.key stays readable: the tests' agents (whoever runs the tests) present it. It is a
# development key of a development CA.
for file in "${files[@]}"; do as_root install -m 644 "$work/$file" "$dir/$file"; done
# The broker reads its key as the rabbitmq user; nobody else needs the CA's.
as_root chmod 600 "$dir/ca.key"
if id rabbitmq >/dev/null 2>&1; then
  as_root chgrp rabbitmq "$dir/server.key"
  as_root chmod 640 "$dir/server.key"
fi
