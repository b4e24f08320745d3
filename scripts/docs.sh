#!/usr/bin/env bash
# Builds the DocC documentation of the library modules (ChatDomain, ChatTransport) with the swift-docc-plugin and
# fails on any documentation warning (a broken symbol link, a missing article).
#   ./scripts/docs.sh             # into .build/docs/<Module>/ (serve the folder with any static web server)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .build/docs
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in ChatDomain ChatTransport; do
    if ! swift package --allow-writing-to-directory ".build/docs/$target" generate-documentation \
        --target "$target" --output-path ".build/docs/$target" --warnings-as-errors \
        --transform-for-static-hosting --hosting-base-path "$target" >"$log" 2>&1; then
        grep -E "(warning|error):" "$log" | grep -v "found [0-9]* file(s) which are unhandled" >&2 || tail -20 "$log" >&2
        echo "the documentation of $target has warnings or errors (above)" >&2
        exit 1
    fi
    echo "documentation of $target: .build/docs/$target"
done
