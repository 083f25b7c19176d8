"""Waits until the Airflow started by start.sh can take asset events for the test DAG.

Usage: ready.py BASE_URL AIRFLOW_HOME. Exits 0 when the API answers, the test DAG is
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
DAG_ID = "highwater_e2e"
ASSET_URI = "s3://highwater-e2e/landing"
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


def dag_unpaused():
    token = fresh_token()
    status, dag = call("GET", f"/api/v2/dags/{DAG_ID}", token=token)
    if status != 200:
        return False
    if dag.get("is_paused"):
        # Events posted while the DAG is paused start no run.
        call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False}, token=token)
        return False
    return True


wait("test DAG parsed and unpaused", dag_unpaused)


def asset_registered():
    status, body = call("GET", "/api/v2/assets?uri_pattern=highwater-e2e", token=fresh_token())
    return status == 200 and any(a["uri"] == ASSET_URI for a in body["assets"])


wait("test asset registered", asset_registered)
print(f"Airflow ready at {BASE} in {time.monotonic() - started:.1f}s", file=sys.stderr)
