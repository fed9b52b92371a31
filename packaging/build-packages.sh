#!/bin/sh
# Builds dist/nodeward (static, trimmed) and the .deb and .rpm packages with
# nfpm, which runs as a Go tool from tools/nfpm (Go module proxy only).
# usage: packaging/build-packages.sh [OUTDIR]   (VERSION, ARCH from the env)
set -eu
cd "$(dirname "$0")/.."
out="${1:-dist}"
mkdir -p "$out"
if [ -z "${VERSION:-}" ]; then
    if tag=$(git describe --tags 2>/dev/null); then
        VERSION=$(echo "$tag" | sed 's/^v//')
    else
        VERSION="0.0.0~git$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    fi
fi
ARCH="${ARCH:-$(go env GOARCH)}"
BIN="$out/nodeward"
CGO_ENABLED=0 GOARCH="$ARCH" go build -trimpath -ldflags "-s -w -X main.version=$VERSION" -o "$BIN" ./cmd/nodeward
# nfpm expands no variables in src paths: fill them in a copy of the config.
cfg="$out/nfpm.yaml"
sed -e "s|\${BIN}|$BIN|" -e "s|\${VERSION}|$VERSION|" -e "s|\${ARCH}|$ARCH|" packaging/nfpm.yaml > "$cfg"
for packager in deb rpm; do
    go tool -modfile=tools/nfpm/go.mod nfpm package --config "$cfg" --packager "$packager" --target "$out/"
done
rm -f "$cfg"
ls -l "$out"
