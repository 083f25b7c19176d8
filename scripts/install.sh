#!/usr/bin/env bash
# Installs highwater as a systemd service on a system the Debian package does not
# serve (on Debian and Ubuntu, build and install the package instead: scripts/deb.sh).
#   PREFIX/bin/highwater                      the binary (built here unless HIGHWATER_BIN)
#   /etc/highwater/highwater.yaml             the daemon config (kept if present)
#   /etc/highwater/watchers/                  watcher files, one per watcher
#   UNITDIR/highwater.service                 the unit
#   SYSUSERSDIR/highwater.conf                the `highwater` system user
#   PREFIX/share/doc/highwater/               README, docs/ and an example watcher
# State lives in /var/lib/highwater, which systemd creates (StateDirectory=). Run again
# to upgrade: a running service is restarted on the new binary.
#
# Usage:
#   sudo scripts/install.sh                          # PREFIX=/usr/local
#   DESTDIR=/tmp/stage PREFIX=/usr scripts/install.sh   # stage files for a package
#
# Variables: PREFIX (default /usr/local), DESTDIR (default empty: install for real,
# create the user, reload systemd, restart a running service), UNITDIR (default
# /etc/systemd/system, or PREFIX/lib/systemd/system when PREFIX=/usr), SYSUSERSDIR
# (default /etc/sysusers.d, or /usr/lib/sysusers.d when PREFIX=/usr: the directories
# systemd-sysusers reads), HIGHWATER_BIN (install this binary instead of building one).
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX="${PREFIX:-/usr/local}"
DESTDIR="${DESTDIR:-}"
if [ "$PREFIX" = /usr ]; then
    UNITDIR="${UNITDIR:-/usr/lib/systemd/system}"
    SYSUSERSDIR="${SYSUSERSDIR:-/usr/lib/sysusers.d}"
else
    UNITDIR="${UNITDIR:-/etc/systemd/system}"
    # systemd-sysusers reads /etc, /run and /usr/lib, never PREFIX/lib.
    SYSUSERSDIR="${SYSUSERSDIR:-/etc/sysusers.d}"
fi
bindir="$PREFIX/bin"
docdir="$PREFIX/share/doc/highwater"
etc="$DESTDIR/etc/highwater"

# Runs cargo as the user who invoked sudo, with that user's toolchain: sudo's PATH
# (secure_path) does not hold ~/.cargo/bin, and a root-owned target/ would get in the
# user's way afterwards.
build() {
    if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ] && [ "$(id -u)" = 0 ]; then
        local home
        home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
        local path="$home/.cargo/bin:$PATH"
        runuser -u "$SUDO_USER" -- env HOME="$home" PATH="$path" cargo build --release --locked --bin highwater
    elif command -v cargo >/dev/null 2>&1; then
        cargo build --release --locked --bin highwater
    elif [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
        "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" build --release --locked --bin highwater
    else
        echo "error: cargo not found (PATH, ~/.cargo/bin): install Rust, or set HIGHWATER_BIN to a built binary" >&2
        exit 1
    fi
    HIGHWATER_BIN="${CARGO_TARGET_DIR:-target}/release/highwater"
}

if [ -z "${HIGHWATER_BIN:-}" ]; then
    build
fi
# A new file renamed over the old one: a running daemon keeps its (deleted) binary
# until the restart below, and a copy never writes into a file being executed.
install -D -m 0755 "$HIGHWATER_BIN" "$DESTDIR$bindir/.highwater.new"
mv -f "$DESTDIR$bindir/.highwater.new" "$DESTDIR$bindir/highwater"

install -d -m 0755 "$etc" "$etc/watchers"
if [ -e "$etc/highwater.yaml" ]; then
    echo "keeping existing $etc/highwater.yaml" >&2
else
    install -m 0644 config/packaged.yaml "$etc/highwater.yaml"
fi

install -d -m 0755 "$DESTDIR$UNITDIR"
# The unit in the tree has the Debian package's paths (PREFIX=/usr).
sed -e "s|/usr/bin/highwater|$bindir/highwater|g" -e "s|/usr/share/doc/highwater|$docdir|g" systemd/highwater.service \
    > "$DESTDIR$UNITDIR/highwater.service"
chmod 0644 "$DESTDIR$UNITDIR/highwater.service"

install -D -m 0644 systemd/highwater.sysusers "$DESTDIR$SYSUSERSDIR/highwater.conf"
install -D -m 0644 README.md "$DESTDIR$docdir/README.md"
find docs -name '*.md' -print0 | while IFS= read -r -d '' page; do
    install -D -m 0644 "$page" "$DESTDIR$docdir/$page"
done
install -D -m 0644 watchers/example.yaml.sample "$DESTDIR$docdir/example-watcher.yaml"

if [ -z "$DESTDIR" ]; then
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers "$SYSUSERSDIR/highwater.conf"
    elif ! id highwater >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/highwater --no-create-home \
            --shell /usr/sbin/nologin --user-group highwater
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        # An upgrade: the running daemon would go on with the old binary.
        if systemctl --quiet is-active highwater; then
            echo "restarting highwater on the new binary" >&2
            systemctl restart highwater
        fi
    fi
    cat >&2 <<MSG
Installed. Next:
  add watcher files to /etc/highwater/watchers/ (example: $docdir/example-watcher.yaml)
  highwater --config /etc/highwater/highwater.yaml check
  systemctl enable --now highwater
MSG
fi
