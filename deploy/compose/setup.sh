#!/usr/bin/env bash
# Makes, once, what deploy/compose.yaml's services share through the
# `secrets` volume: random passwords for PostgreSQL's superuser, the
# gateways' upstream role (app) and the approvals log's role
# (portcullis_log); a development identity provider's signing key and key
# set; each replica's audit signing key. Files that exist are kept.
set -euo pipefail
umask 022
cd /secrets
secret() {
  [ -s "$1" ] || head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32 >"$1"
}
secret postgres-password
secret app-password
secret log-password
[ -s idp/jwks.json ] || pg-proxy token keygen --out idp
for replica in 1 2; do
  [ -s "audit-$replica/audit-key.pem" ] || pg-proxy audit keygen --out "audit-$replica"
done
# The gateways run as 65532, PostgreSQL as 999: both read these. The
# volume is mounted only by this stack's services.
chmod -R a+rX /secrets
