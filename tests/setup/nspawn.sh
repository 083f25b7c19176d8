# Sourced by scripts/test.sh: a Debian 12 root with systemd for the test that boots
# highwater's unit under systemd as PID 1 (tests/integration/systemd.rs). Installs
# systemd-container and debootstrap when missing (as root, like the rest of the
# set-up), builds the root once under $HIGHWATER_TEST_CACHE with debootstrap from
# Debian's package mirror (about a minute), and exports HIGHWATER_TEST_NSPAWN_ROOT.
# Each test run boots a copy of it; the cached root is never booted itself.

nspawn_root="$HIGHWATER_TEST_CACHE/nspawn-bookworm"
if ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; then
    echo "installing systemd-container and debootstrap" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd-container debootstrap >&2
fi
if [ ! -e "$nspawn_root/.installed" ]; then
    rm -rf "$nspawn_root"
    echo "debootstrap: a minimal Debian 12 with systemd into $nspawn_root" >&2
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm "$nspawn_root" >&2
    touch "$nspawn_root/.installed"
fi
export HIGHWATER_TEST_NSPAWN_ROOT="$nspawn_root"
echo "nspawn root: $HIGHWATER_TEST_NSPAWN_ROOT" >&2
