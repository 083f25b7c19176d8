#!/usr/bin/env bash
# Starts a throwaway Apache Airflow 3 on loopback for the end-to-end tests, and returns
# once it can take asset events for every test DAG (tests/airflow/dags, copied to
# AIRFLOW_HOME/dags so that a test can remove a DAG file and put it back).
#
# Usage: tests/airflow/start.sh VENV AIRFLOW_HOME PORT
#
# Every process runs in its own process group (setsid) whose id is written to
# AIRFLOW_HOME/*.pid before anything is waited for, so tests/airflow/stop.sh can stop
# them all even when this script fails half-way.
set -euo pipefail

venv=$1 home=$2 port=$3
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$home/dags"
cp "$here"/dags/*.py "$home/dags/"

export AIRFLOW_HOME="$home"
export AIRFLOW__CORE__DAGS_FOLDER="$home/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$home/airflow.db"
# `rotator` is the user whose password a test changes; `highwater` is the user of
# docs/guides/s3-to-airflow.md, with the role the guide gives it.
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin,rotator:admin,highwater:op
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$home/passwords.json"
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT="$port"
export AIRFLOW__API__BASE_URL="http://127.0.0.1:$port"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$port/execution/"
export AIRFLOW__API_AUTH__JWT_SECRET=highwater-e2e-not-a-secret
# API tokens expire after HIGHWATER_E2E_TOKEN_SECONDS (default: a day), with no
# leeway, so a test can see a token expire for real.
export AIRFLOW__API_AUTH__JWT_EXPIRATION_TIME="${HIGHWATER_E2E_TOKEN_SECONDS:-86400}"
export AIRFLOW__API_AUTH__JWT_LEEWAY=0
# A removed DAG file is noticed within seconds (its asset references dropped, the asset
# orphaned), and one put back is parsed as soon.
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=3
export AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL=5
export AIRFLOW__SCHEDULER__PARSING_CLEANUP_INTERVAL=3
# Two cores are shared with the build and the other tests: few task processes at once.
export AIRFLOW__CORE__PARALLELISM=4
# Nothing of this throwaway instance may reach beyond loopback.
export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=0
export SCARF_ANALYTICS=false
export DO_NOT_TRACK=true
export AIRFLOW__USAGE_DATA_COLLECTION__ENABLED=False
echo '{"admin": "admin", "rotator": "rotator-1", "highwater": "guide-password"}' > "$home/passwords.json"

airflow="$venv/bin/airflow"
"$airflow" db migrate > "$home/db-migrate.log" 2>&1
# SQLite in WAL mode (kept in the file): readers no longer block the writers, so the
# API server, the scheduler and the DAG processor fail each other's writes with
# "database is locked" far less often on a busy machine.
"$venv/bin/python" -c 'import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute("PRAGMA journal_mode=WAL")' "$home/airflow.db"

start() {
    local name=$1
    shift
    # In a script (no job control) the background job is not a group leader, so
    # setsid execs in place: $! is the new session's and process group's id.
    setsid "$@" > "$home/$name.log" 2>&1 < /dev/null &
    echo $! > "$home/$name.pid"
}
start api-server "$airflow" api-server --host 127.0.0.1 --port "$port" --workers 1
# --skip-serve-logs: the log server would bind 0.0.0.0.
start scheduler "$airflow" scheduler --skip-serve-logs
start dag-processor "$airflow" dag-processor

exec "$venv/bin/python" "$here/ready.py" "http://127.0.0.1:$port" "$home"
