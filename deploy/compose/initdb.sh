#!/usr/bin/env bash
# PostgreSQL's first start (docker-entrypoint-initdb.d): the gateways'
# upstream role and database with the sample data, and the approvals log's
# own role, which the upstream role cannot reach.
set -euo pipefail
app_password=$(cat /secrets/app-password)
log_password=$(cat /secrets/log-password)
psql -v ON_ERROR_STOP=1 --username postgres --dbname postgres \
  -v app_password="$app_password" -v log_password="$log_password" <<'SQL'
CREATE ROLE app LOGIN PASSWORD :'app_password';
CREATE ROLE portcullis_log LOGIN PASSWORD :'log_password';
CREATE DATABASE app OWNER app;
GRANT CREATE ON DATABASE app TO portcullis_log;
SQL
psql -v ON_ERROR_STOP=1 --username postgres --dbname app -c 'SET ROLE app' -f /demo.sql
