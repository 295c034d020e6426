#!/bin/sh
# Run once by the postgres image on an empty data directory (/docker-entrypoint-initdb.d), as
# in sipcapture's own homer7-docker recipe: create homer_config, the database that
# heplify-server (HEPLIFYSERVER_DBCONFTABLE) and homer-app are configured to use, so it exists
# when they first start. homer-app creates its tables; heplify-server creates and rotates the
# message tables in homer_data.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<-EOSQL
	CREATE DATABASE homer_config;
EOSQL
