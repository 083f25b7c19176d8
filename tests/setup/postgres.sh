# Sourced by scripts/test.sh: finds a PostgreSQL server for the integration tests and
# exports HIGHWATER_TEST_PG_URL. Uses the one on 127.0.0.1:5432 (user postgres, trust,
# database `test`) when it answers; otherwise starts a private cluster on a free port,
# with TLS (PostgreSQL's initdb and pg_ctl, and openssl, must be installed) and registers
# its stop.

pg_ready() { # host port
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$1" -p "$2" -t 2
    else
        (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
    fi
}

if [ -n "${HIGHWATER_TEST_PG_URL:-}" ]; then
    echo "postgres: using HIGHWATER_TEST_PG_URL from the environment" >&2
elif pg_ready 127.0.0.1 5432; then
    export HIGHWATER_TEST_PG_URL="postgres://postgres@127.0.0.1:5432/test"
    psql "postgres://postgres@127.0.0.1:5432/postgres" -qAtc \
        "SELECT 1 FROM pg_database WHERE datname = 'test'" 2>/dev/null | grep -q 1 \
        || psql "postgres://postgres@127.0.0.1:5432/postgres" -qc "CREATE DATABASE test" >/dev/null 2>&1 || true
    echo "postgres: using the server on 127.0.0.1:5432" >&2
else
    pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
    if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
        echo "postgres: no server on 127.0.0.1:5432 and no initdb found; install PostgreSQL (e.g. apt-get install postgresql)" >&2
        return 1
    fi
    pg_dir="$(mktemp -d /tmp/highwater-pg.XXXXXX)"
    # initdb refuses to run as root: run the cluster as the postgres user then.
    pg_as=()
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$pg_dir"
        pg_as=(runuser -u postgres --)
    fi
    "${pg_as[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$pg_dir/initdb.log" 2>&1
    # TLS as a packaged server offers it (the tests check sslmode require and
    # verify-full): a self-signed certificate for this run.
    openssl req -x509 -nodes -newkey rsa:2048 -days 2 -subj "/CN=highwater-test" \
        -keyout "$pg_dir/data/server.key" -out "$pg_dir/data/server.crt" >/dev/null 2>&1
    chmod 600 "$pg_dir/data/server.key"
    [ "$(id -u)" = 0 ] && chown postgres "$pg_dir/data/server.key" "$pg_dir/data/server.crt"
    # A free port is only free until someone takes it: try another when the start fails.
    for _ in 1 2 3; do
        pg_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
        if "${pg_as[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" \
            -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $pg_dir -c ssl=on" -w start >/dev/null; then
            break
        fi
        pg_port=
    done
    if [ -z "$pg_port" ]; then
        echo "postgres: the private cluster did not start; its log:" >&2
        cat "$pg_dir/server.log" >&2
        return 1
    fi
    cleanup_cmds+=("${pg_as[*]} $pg_bin/pg_ctl -D $pg_dir/data -m fast -w stop >/dev/null; rm -rf $pg_dir")
    "$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -qc "CREATE DATABASE test" >/dev/null
    export HIGHWATER_TEST_PG_URL="postgres://postgres@127.0.0.1:$pg_port/test"
    echo "postgres: started a private cluster on 127.0.0.1:$pg_port" >&2
fi
