#!/usr/bin/env bash
# Build the wheel and the sdist of each distribution (cortex-core,
# helexa-cortex, helexa-neuron) into OUT_DIR (default: dist/).
#
#   scripts/build-dists.sh [OUT_DIR]
#
# Earlier builds of these three distributions in OUT_DIR are removed first
# (only their files: anything else in OUT_DIR, dist/srpm/ included, is kept).
# Each is built with --no-sources, as PyPI will see it: cortex-core is a
# plain requirement of the other two, not the workspace copy. Nothing is
# built when a distribution's name is one PyPI gives another project
# (scripts/dist_names.py, against scripts/pypi-taken-names.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

UV="${UV:-uv}"
OUT_DIR="${1:-dist}"
PACKAGES=(cortex-core helexa-cortex helexa-neuron)

python3 scripts/dist_names.py || { echo "dist: nothing built: rename the distribution(s) above" >&2; exit 1; }

mkdir -p "$OUT_DIR"
for package in "${PACKAGES[@]}"; do
    stem="${package//-/_}"
    rm -f "$OUT_DIR/$stem"-*.whl "$OUT_DIR/$stem"-*.tar.gz
done

for package in "${PACKAGES[@]}"; do
    echo "dist: building $package"
    $UV build --quiet --no-sources --package "$package" --out-dir "$OUT_DIR"
done

echo "dist: built into $OUT_DIR/:"
for package in "${PACKAGES[@]}"; do
    stem="${package//-/_}"
    for file in "$OUT_DIR/$stem"-*.tar.gz "$OUT_DIR/$stem"-*.whl; do
        [ -e "$file" ] || { echo "dist: no ${file##*/} was built for $package" >&2; exit 1; }
        printf '  %-48s %8s bytes\n' "${file##*/}" "$(wc -c <"$file" | tr -d ' ')"
    done
done
