# Sourced by scripts/test.sh: what the Debian package's test (tests/integration/
# package.rs) needs on the host. cargo-deb, pinned, built once into
# $HIGHWATER_TEST_CACHE (about four minutes on two cores), and lintian from apt when
# missing (as root, like the rest of the set-up). Exports HIGHWATER_TEST_CARGO_DEB.

cargo_deb_version=3.8.0
cargo_deb_root="$HIGHWATER_TEST_CACHE/cargo-deb-$cargo_deb_version"
if [ ! -x "$cargo_deb_root/bin/cargo-deb" ]; then
    echo "installing cargo-deb $cargo_deb_version into $cargo_deb_root" >&2
    cargo install --quiet --locked --root "$cargo_deb_root" "cargo-deb@$cargo_deb_version" >&2
fi
if ! command -v lintian >/dev/null; then
    echo "installing lintian" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lintian >&2
fi
export HIGHWATER_TEST_CARGO_DEB="$cargo_deb_root/bin/cargo-deb"
echo "cargo-deb: $HIGHWATER_TEST_CARGO_DEB" >&2
