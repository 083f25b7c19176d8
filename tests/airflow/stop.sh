#!/usr/bin/env bash
# Stops what tests/airflow/start.sh started: SIGTERM to each process group, then
# SIGKILL to whatever is left after a few seconds.
#
# Usage: tests/airflow/stop.sh AIRFLOW_HOME
home=$1
pgids=()
for pidfile in "$home"/*.pid; do
    [ -e "$pidfile" ] || continue
    pgid=$(cat "$pidfile")
    case "$pgid" in '' | *[!0-9]*) continue ;; esac
    kill -TERM -- "-$pgid" 2>/dev/null && pgids+=("$pgid")
    rm -f "$pidfile"
done
for _ in $(seq 50); do
    alive=0
    for pgid in "${pgids[@]+"${pgids[@]}"}"; do
        kill -0 -- "-$pgid" 2>/dev/null && alive=1
    done
    [ "$alive" = 0 ] && exit 0
    sleep 0.2
done
for pgid in "${pgids[@]+"${pgids[@]}"}"; do
    kill -KILL -- "-$pgid" 2>/dev/null
done
exit 0
