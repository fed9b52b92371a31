#!/bin/sh
# Builds the Jaeger all-in-one binary pinned in tools/jaeger/go.mod (Go
# module proxy only) once per version into a shared cache directory, under
# a file lock so that parallel test binaries and make targets build it once.
# Prints the binary's path. JAEGER_CACHE overrides the cache root.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
version=$(sed -n 's|^[[:space:]]*github.com/jaegertracing/jaeger v\([^ ]*\).*$|\1|p' "$here/go.mod" | head -n1)
[ -n "$version" ] || { echo "tools/jaeger/go.mod pins no jaeger version" >&2; exit 1; }
root="${JAEGER_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/nodeward/jaeger}"
dir="$root/v$version"
bin="$dir/jaeger"
mkdir -p "$dir"
if [ ! -x "$bin" ]; then
    (
        flock 9
        if [ ! -x "$bin" ]; then
            cd "$here"
            go build -modfile="$here/go.mod" -o "$bin.tmp" github.com/jaegertracing/jaeger/cmd/jaeger >&2
            mv "$bin.tmp" "$bin"
        fi
    ) 9>"$dir/.lock"
fi
echo "$bin"
