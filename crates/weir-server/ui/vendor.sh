#!/usr/bin/env bash
# Vendors the dashboard's one third-party library, uPlot (MIT), from the npm
# registry into vendor/, checked in: the binary embeds these files, so a
# build needs neither npm nor a network. Reproducible: the tarball must
# match the integrity recorded here before anything is copied.
#   crates/weir-server/ui/vendor.sh          # (re)vendor
#   crates/weir-server/ui/vendor.sh --check  # verify vendor/ matches the tarball
set -euo pipefail
cd "$(dirname "$0")"
VERSION=1.6.32
INTEGRITY="sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "uplot@$VERSION" >/dev/null)
got="sha512-$(openssl dgst -sha512 -binary "$tmp/uplot-$VERSION.tgz" | base64 -w0)"
if [ "$got" != "$INTEGRITY" ]; then
  echo "vendor.sh: uplot@$VERSION from the registry is $got, expected $INTEGRITY" >&2
  exit 1
fi
tar -xzf "$tmp/uplot-$VERSION.tgz" -C "$tmp"
files=(dist/uPlot.iife.min.js dist/uPlot.min.css LICENSE)
if [ "${1:-}" = "--check" ]; then
  for f in "${files[@]}"; do
    cmp "$tmp/package/$f" "vendor/uPlot-$(basename "$f" | sed 's/^uPlot\.//')" \
      || { echo "vendor.sh: vendor/ differs from uplot@$VERSION ($f)" >&2; exit 1; }
  done
  echo "vendor/ matches uplot@$VERSION"
  exit 0
fi
mkdir -p vendor
for f in "${files[@]}"; do
  cp "$tmp/package/$f" "vendor/uPlot-$(basename "$f" | sed 's/^uPlot\.//')"
done
echo "vendored uplot@$VERSION"
