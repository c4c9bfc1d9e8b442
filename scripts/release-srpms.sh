#!/usr/bin/env bash
# Build both source RPMs of a release from its git tag (or any commit), in a clean
# checkout of that tag, so what is built is exactly what was tagged. A tag
# whose distributions take a name PyPI gives another project (checked with
# this checkout's scripts/pypi-taken-names.txt, the newest knowledge) is
# refused before anything is built.
#
#   scripts/release-srpms.sh TAG [OUT_DIR]      (default OUT_DIR: dist/release/TAG)
#
# Then, for COPR (docs/packaging.md):
#   copr-cli build helexa/helexa OUT_DIR/cortex-*.src.rpm
#   copr-cli build helexa/helexa OUT_DIR/helexa-neuron-*.src.rpm
set -euo pipefail
cd "$(dirname "$0")/.."

TAG="${1:?usage: scripts/release-srpms.sh TAG [OUT_DIR]}"
OUT_DIR="$(realpath -m "${2:-dist/release/$TAG}")"
UV="${UV:-uv}"

commit="$(git rev-parse --verify --quiet "$TAG^{commit}")" \
    || { echo "release: no tag or commit named $TAG" >&2; exit 1; }
work="$(mktemp -d "${TMPDIR:-/tmp}/cortex-release.XXXXXX")"
trap 'git worktree remove --force "$work/tree" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

git worktree add --detach --quiet "$work/tree" "$commit"
echo "release: $TAG is $commit"
python3 scripts/dist_names.py "$work/tree" \
    || { echo "release: $TAG not built: a distribution's name is taken on PyPI (above)" >&2; exit 1; }
(
    cd "$work/tree"
    UV="$UV" ./scripts/build-dists.sh "$work/dist"
    DIST_DIR="$work/dist" SRPM_DIR="$OUT_DIR" ./scripts/build-srpms.sh
)
echo "release: the SRPMs of $TAG are in $OUT_DIR:"
ls -1 "$OUT_DIR"/*.src.rpm
