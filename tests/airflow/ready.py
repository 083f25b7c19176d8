"""Waits until the Airflow started by start.sh can take asset events for the test DAGs.

Usage: ready.py BASE_URL AIRFLOW_HOME. Exits 0 when the API answers, every test DAG is
parsed and unpaused and its asset is registered; 3 when the API server exited before
(its port was taken: the caller starts again on another); 1 after 100 s. Both failures
print the logs' tails.

start.sh execs this script, so the Airflow processes it started are its children.
"""

import json
import os
import pathlib
import sys
import time
import urllib.error
import urllib.request

BASE, HOME = sys.argv[1], pathlib.Path(sys.argv[2])
SCENARIOS = ["burst", "rotate", "stall", "partial", "restart", "outage", "removable"]
DAG_IDS = ["highwater_e2e"] + [f"highwater_e2e_{s}" for s in SCENARIOS]
ASSET_URIS = ["s3://highwater-e2e/landing"] + [f"s3://highwater-e2e/{s}" for s in SCENARIOS]
DEADLINE = time.monotonic() + 100


def call(method, path, body=None, token=None):
    request = urllib.request.Request(BASE + path, method=method)
    if body is not None:
        request.data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None, None


def print_logs():
    for log in sorted(HOME.glob("*.log")):
        print(f"--- {log.name} (tail)", file=sys.stderr)
        print("\n".join(log.read_text(errors="replace").splitlines()[-30:]), file=sys.stderr)


def api_server_exited():
    pid = int((HOME / "api-server.pid").read_text())
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True


def wait(what, probe):
    while time.monotonic() < DEADLINE:
        if api_server_exited():
            print(f"Airflow's API server exited while waiting for: {what}", file=sys.stderr)
            print_logs()
            sys.exit(3)
        result = probe()
        if result:
            return result
        time.sleep(0.5)
    print(f"Airflow not ready: {what}", file=sys.stderr)
    print_logs()
    sys.exit(1)


started = time.monotonic()
wait("API health", lambda: call("GET", "/api/v2/monitor/health")[0] == 200)
# The first execution-API call stalls the server for seconds: take that hit now.
call("GET", "/execution/health")


def fresh_token():
    # A new token per probe: the test may make them expire within seconds.
    status, body = call("POST", "/auth/token", {"username": "admin", "password": "admin"})
    return status == 201 and body["access_token"]


wait("token", fresh_token)


def dags_unpaused():
    token = fresh_token()
    for dag_id in DAG_IDS:
        status, dag = call("GET", f"/api/v2/dags/{dag_id}", token=token)
        if status != 200:
            return False
        if dag.get("is_paused"):
            # Events posted while the DAG is paused start no run.
            call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False}, token=token)
            return False
    return True


wait("test DAGs parsed and unpaused", dags_unpaused)


def assets_registered():
    status, body = call("GET", "/api/v2/assets?uri_pattern=highwater-e2e&limit=100", token=fresh_token())
    if status != 200:
        return False
    by_uri = {a["uri"]: a for a in body["assets"]}
    # Registered, and the DAG scheduled on it recorded.
    return all(uri in by_uri and by_uri[uri]["scheduled_dags"] for uri in ASSET_URIS)


wait("test assets registered", assets_registered)
print(f"Airflow ready at {BASE} in {time.monotonic() - started:.1f}s", file=sys.stderr)
