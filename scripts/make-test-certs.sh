#!/usr/bin/env bash
# Certificates for tests and benchmarks (one day, P-256), made by the openssl command in DIR:
#   ca.pem/ca.key        a CA
#   relay.pem/relay.key  the relay's certificate for 127.0.0.1 and localhost, signed by the CA
#   client.pem/client.key a client certificate, CN=camera-1, signed by the CA (mutual TLS)
#   other.pem/other.key  another CA (a client trusting it must fail)
# Usage: scripts/make-test-certs.sh DIR
set -euo pipefail
cd "$1"
q() { "$@" >/dev/null 2>&1; }
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
q openssl req -x509 "${ec[@]}" -days 1 -subj /CN=test-ca -keyout ca.key -out ca.pem
q openssl req -x509 "${ec[@]}" -days 1 -subj /CN=other-ca -keyout other.key -out other.pem
q openssl req "${ec[@]}" -subj /CN=relay -keyout relay.key -out relay.csr
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost' > san.ext
q openssl x509 -req -in relay.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
  -extfile san.ext -out relay.pem
q openssl req "${ec[@]}" -subj /CN=camera-1 -keyout client.key -out client.csr
q openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
  -out client.pem
