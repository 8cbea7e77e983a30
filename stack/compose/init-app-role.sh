#!/usr/bin/env bash
# Run once by the postgres image on an empty cluster: the store's role owns its database and is no
# superuser (POSTGRES_USER would be one), so a leaked application password cannot take the cluster.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v app_user="$APP_USER" -v app_db="$APP_DB" -v app_password="$APP_PASSWORD" <<'SQL'
CREATE ROLE :"app_user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'app_password';
CREATE DATABASE :"app_db" OWNER :"app_user";
SQL
