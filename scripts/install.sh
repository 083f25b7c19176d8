#!/usr/bin/env bash
# Installs highwater as a systemd service:
#   PREFIX/bin/highwater                      the binary (cargo install --path .)
#   /etc/highwater/highwater.yaml             the daemon config (kept if present)
#   /etc/highwater/watchers/                  watcher files, one per watcher
#   UNITDIR/highwater.service                 the unit
#   PREFIX/lib/sysusers.d/highwater.conf      the `highwater` system user
#   PREFIX/share/doc/highwater/               README, docs/ and an example watcher
# State lives in /var/lib/highwater, which systemd creates (StateDirectory=).
#
# Usage:
#   sudo scripts/install.sh                          # PREFIX=/usr/local
#   DESTDIR=/tmp/stage PREFIX=/usr scripts/install.sh   # stage files for a package
#
# Variables: PREFIX (default /usr/local), DESTDIR (default empty: install for real,
# create the user, reload systemd), UNITDIR (default /etc/systemd/system, or
# PREFIX/lib/systemd/system when PREFIX=/usr), HIGHWATER_BIN (install this binary
# instead of building one).
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX="${PREFIX:-/usr/local}"
DESTDIR="${DESTDIR:-}"
if [ "$PREFIX" = /usr ]; then
    UNITDIR="${UNITDIR:-/usr/lib/systemd/system}"
else
    UNITDIR="${UNITDIR:-/etc/systemd/system}"
fi
bindir="$PREFIX/bin"
docdir="$PREFIX/share/doc/highwater"
etc="$DESTDIR/etc/highwater"

if [ -n "${HIGHWATER_BIN:-}" ]; then
    install -D -m 0755 "$HIGHWATER_BIN" "$DESTDIR$bindir/highwater"
else
    cargo install --locked --path . --root "$DESTDIR$PREFIX" --no-track --force
fi

install -d -m 0755 "$etc" "$etc/watchers"
if [ -e "$etc/highwater.yaml" ]; then
    echo "keeping existing $etc/highwater.yaml" >&2
else
    install -m 0644 config/packaged.yaml "$etc/highwater.yaml"
fi

install -d -m 0755 "$DESTDIR$UNITDIR"
# The unit in the tree is written for PREFIX=/usr/local.
sed -e "s|/usr/local/bin/|$bindir/|g" -e "s|/usr/local/share/doc/highwater|$docdir|g" systemd/highwater.service \
    > "$DESTDIR$UNITDIR/highwater.service"
chmod 0644 "$DESTDIR$UNITDIR/highwater.service"

install -D -m 0644 systemd/highwater.sysusers "$DESTDIR$PREFIX/lib/sysusers.d/highwater.conf"
install -D -m 0644 README.md "$DESTDIR$docdir/README.md"
find docs -name '*.md' -print0 | while IFS= read -r -d '' page; do
    install -D -m 0644 "$page" "$DESTDIR$docdir/$page"
done
install -D -m 0644 watchers/example.yaml.sample "$DESTDIR$docdir/example-watcher.yaml"

if [ -z "$DESTDIR" ]; then
    if ! id highwater >/dev/null 2>&1; then
        if command -v systemd-sysusers >/dev/null 2>&1; then
            systemd-sysusers "$PREFIX/lib/sysusers.d/highwater.conf"
        else
            useradd --system --home-dir /var/lib/highwater --no-create-home \
                --shell /usr/sbin/nologin --user-group highwater
        fi
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
    cat >&2 <<MSG
Installed. Next:
  add watcher files to /etc/highwater/watchers/ (example: $docdir/example-watcher.yaml)
  highwater --config /etc/highwater/highwater.yaml check
  systemctl enable --now highwater
MSG
fi
