#!/usr/bin/env bash
# Build the source RPMs of cortex (rpm/cortex.spec) and helexa-neuron
# (rpm/helexa-neuron.spec) from the sdists that scripts/build-dists.sh made.
#
#   scripts/build-srpms.sh [SPEC...]     (default: every rpm/*.spec)
#
#   DIST_DIR  where the sdists are (default: dist)
#   SRPM_DIR  where the SRPMs go   (default: $DIST_DIR/srpm; emptied of *.src.rpm first)
#
# Each spec's sources are looked up by file name: the sdists in $DIST_DIR,
# the units and sysusers.d files in rpm/, the example configurations in
# configs/. A spec whose version differs from the built sdist's names a file
# that is not there, and the build stops saying so.
#
# rpmbuild comes from rpm-build on Fedora and from the `rpm` package on
# Debian and Ubuntu: when it is missing and this runs as root on such a
# system, it is installed with apt-get. Where rpmlint is installed, it checks
# each SRPM and the spec inside it, with rpm/rpmlint.toml; errors fail the build.
set -euo pipefail
cd "$(dirname "$0")/.."

DIST_DIR="${DIST_DIR:-dist}"
SRPM_DIR="${SRPM_DIR:-$DIST_DIR/srpm}"
SOURCE_DIRS=("$DIST_DIR" rpm configs)

if [ "$#" -gt 0 ]; then
    specs=("$@")
else
    specs=(rpm/*.spec)
fi

if ! command -v rpmbuild >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "srpm: rpmbuild is missing; installing Debian's rpm package:"
        echo "srpm:   apt-get update && apt-get install -y rpm"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rpm >/dev/null
    else
        echo "srpm: rpmbuild is missing: install rpm-build (Fedora, RHEL) or rpm (Debian, Ubuntu)" >&2
        exit 1
    fi
fi

if ! command -v rpmlint >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "srpm: rpmlint is missing; installing Debian's rpmlint package to lint the SRPMs"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rpmlint >/dev/null; } \
        || echo "srpm: rpmlint could not be installed: the SRPMs are not linted"
fi

topdir="$(mktemp -d "${TMPDIR:-/tmp}/cortex-srpm.XXXXXX")"
trap 'rm -rf "$topdir"' EXIT
mkdir -p "$topdir"/{SOURCES,SPECS,SRPMS,BUILD,RPMS} "$SRPM_DIR"
rm -f "$SRPM_DIR"/*.src.rpm
rpmdefs=(--define "_topdir $topdir")

for spec in "${specs[@]}"; do
    [ -f "$spec" ] || { echo "srpm: no such spec: $spec" >&2; exit 1; }
    # Every SourceN the spec names, macros expanded; a URL stands for its file name.
    parsed="$(rpmspec "${rpmdefs[@]}" -P "$spec")" || { echo "srpm: rpmspec cannot parse $spec" >&2; exit 1; }
    mapfile -t sources < <(sed -n 's/^Source[0-9]*:[[:space:]]*//p' <<<"$parsed")
    [ "${#sources[@]}" -gt 0 ] || { echo "srpm: $spec names no sources" >&2; exit 1; }
    for source in "${sources[@]}"; do
        file="${source##*/}"
        found=""
        for dir in "${SOURCE_DIRS[@]}"; do
            if [ -f "$dir/$file" ]; then
                found="$dir/$file"
                break
            fi
        done
        if [ -z "$found" ]; then
            echo "srpm: $spec needs $file, found in none of: ${SOURCE_DIRS[*]}" >&2
            case "$file" in
            *.tar.gz)
                echo "srpm: build the sdists first (make dist); if they are there, the spec's" \
                    "version (Version, gateway_version or core_version) differs from the package's version" >&2
                for built in "$DIST_DIR"/*.tar.gz; do
                    [ -e "$built" ] && echo "srpm:   built: $built" >&2
                done
                ;;
            esac
            exit 1
        fi
        cp -p "$found" "$topdir/SOURCES/"
    done
    cp -p "$spec" "$topdir/SPECS/"
    echo "srpm: building ${spec##*/} (sources: ${sources[*]##*/})"
    rpmbuild "${rpmdefs[@]}" --quiet -bs "$topdir/SPECS/${spec##*/}"
done

cp -p "$topdir"/SRPMS/*.src.rpm "$SRPM_DIR/"
echo "srpm: built into $SRPM_DIR/:"
for srpm in "$SRPM_DIR"/*.src.rpm; do
    printf '  %-40s %8s bytes\n' "${srpm##*/}" "$(wc -c <"$srpm" | tr -d ' ')"
done

# One SRPM (and the spec inside it) per run: rpmlint 2.4 carries one
# package's spec files over to the next and then reports multiple-specfiles.
if command -v rpmlint >/dev/null 2>&1; then
    lint_failed=0
    for srpm in "$SRPM_DIR"/*.src.rpm; do
        echo "srpm: rpmlint -c rpm/rpmlint.toml $srpm"
        report="$(rpmlint -c rpm/rpmlint.toml "$srpm" 2>&1)" || lint_failed=1
        # The findings and the summary, without the banner.
        grep -E ': [EWI]: |checked' <<<"$report" | sed 's/^ */  /' || true
    done
    if [ "$lint_failed" != 0 ]; then
        echo "srpm: rpmlint found errors (above)" >&2
        exit 1
    fi
else
    echo "srpm: rpmlint is not installed: lint skipped"
fi
