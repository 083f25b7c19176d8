#!/usr/bin/env bash
# Starts a throwaway Apache Airflow 3 on loopback for the end-to-end test, and returns
# once it can take asset events for the test DAG (tests/airflow/dags).
#
# Usage: tests/airflow/start.sh VENV AIRFLOW_HOME PORT
#
# Every process runs in its own process group (setsid) whose id is written to
# AIRFLOW_HOME/*.pid before anything is waited for, so tests/airflow/stop.sh can stop
# them all even when this script fails half-way.
set -euo pipefail

venv=$1 home=$2 port=$3
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$home"

export AIRFLOW_HOME="$home"
export AIRFLOW__CORE__DAGS_FOLDER="$here/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$home/airflow.db"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin
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
# Nothing of this throwaway instance may reach beyond loopback.
export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=0
export SCARF_ANALYTICS=false
export DO_NOT_TRACK=true
export AIRFLOW__USAGE_DATA_COLLECTION__ENABLED=False
echo '{"admin": "admin"}' > "$home/passwords.json"

airflow="$venv/bin/airflow"
"$airflow" db migrate > "$home/db-migrate.log" 2>&1

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
