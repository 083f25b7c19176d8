#!/usr/bin/env bash
# Builds the Debian package target/debian/highwater_<version>-1_<arch>.deb with
# cargo-deb (`cargo install cargo-deb`; metadata in Cargo.toml): builds the binary,
# writes the manual pages and shell completions it generates from its own command
# line next to it, then packages. Install with
#   sudo apt install ./target/debian/highwater_*.deb
#
# Usage: scripts/deb.sh [cargo deb options]
#   --profile P   build with cargo profile P (default: release)
#   --no-build    package the binary already built with that profile
# Other options go to `cargo deb` (e.g. --deb-version, --output, --fast). DEBFULLNAME
# and DEBEMAIL, when set, name the maintainer of the package built.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
build=1
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        --profile=*) profile="${1#--profile=}"; shift ;;
        --no-build) build=0; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
# cargo names the output directory of the dev profile `debug`.
case "$profile" in
    dev | debug) dir=debug; profile=dev ;;
    *) dir="$profile" ;;
esac
out="${CARGO_TARGET_DIR:-target}/$dir"

if [ "$build" = 1 ]; then
    cargo build --locked --profile "$profile" --bin highwater
fi
bin="$out/highwater"
[ -x "$bin" ] || { echo "error: $bin is missing: build it, or drop --no-build" >&2; exit 1; }

gen="$out/generated"
rm -rf "$gen"
"$bin" man "$gen/man"
# Compressed here: cargo-deb compresses pages it copies from the tree, not those it
# finds among build products.
gzip -9n "$gen"/man/*.1
mkdir -p "$gen/completions"
"$bin" completions bash >"$gen/completions/highwater.bash"
"$bin" completions zsh >"$gen/completions/_highwater"
"$bin" completions fish >"$gen/completions/highwater.fish"

maintainer=$(sed -n 's/^maintainer = "\(.*\)"$/\1/p' Cargo.toml)
if [ -n "${DEBEMAIL:-}" ]; then
    maintainer="${DEBFULLNAME:-$DEBEMAIL} <$DEBEMAIL>"
    args+=(--maintainer "$maintainer")
fi

# Debian wants a changelog in its own format: one entry for the version packaged (as
# cargo-deb names it: Cargo.toml's version and revision 1, or --deb-version), pointing
# at the project's CHANGELOG.md (installed as changelog.gz).
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)-1
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --deb-version) version="${args[$((i + 1))]}" ;;
        --deb-version=*) version="${args[$i]#--deb-version=}" ;;
    esac
done
when=$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")
cat >"$gen/changelog.Debian" <<CHANGES
highwater ($version) unstable; urgency=medium

  * Packaged from the highwater source tree; its changes are in
    /usr/share/doc/highwater/changelog.gz.

 -- $maintainer  $when
CHANGES
gzip -9n "$gen/changelog.Debian"

exec cargo deb --locked --no-build --profile "$profile" "${args[@]+"${args[@]}"}"
