#!/usr/bin/env bash
# The browser half of the test suite: wasm-bindgen tests of the demo's engine
# in headless Chromium (CPU backend and WebGPU), then the release site built
# with trunk and the end-to-end page test. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/../.."

./web/setup.sh
if ! command -v chromium >/dev/null; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium
fi

# The wasm-bindgen tests, built in the release profile (the same build the
# site uses; the model is too slow unoptimised), run in headless Chromium with
# WebGPU (SwiftShader) by wasm-tests.mjs.
echo "== wasm-bindgen tests in headless Chromium (CPU backend and WebGPU)" >&2
WASM=$(cd web && cargo test --release --target wasm32-unknown-unknown --test browser --no-run --message-format=json-render-diagnostics \
    | node -e 'let last; require("readline").createInterface({ input: process.stdin }).on("line", (l) => { const m = JSON.parse(l); if (m.executable) last = m.executable; }).on("close", () => console.log(last));')
(cd tests/browser && npm ci --no-audit --no-fund --silent && node wasm-tests.mjs "$WASM")

echo "== site build and page test" >&2
trunk build --release
# The download stays what the README says: the two modules the first face
# needs (the page's and the CPU worker's) under 3 MB together, and no module
# over 12 MB (the WebGPU worker is the largest).
first_face=0
for pattern in 'dist/rgflow-web-*_bg.wasm' 'dist/rgflow-worker-cpu_bg.wasm'; do
    # shellcheck disable=SC2206 # the pattern is meant to expand here
    matches=($pattern)
    if [ "${#matches[@]}" -ne 1 ] || [ ! -f "${matches[0]}" ]; then
        echo "expected one $pattern in dist/, found: ${matches[*]}" >&2
        exit 1
    fi
    first_face=$((first_face + $(stat -c %s "${matches[0]}")))
done
largest=$(stat -c %s dist/*.wasm | sort -n | tail -1)
echo "download: ${first_face} bytes before the first face, largest module ${largest} bytes" >&2
if [ "$first_face" -gt 3000000 ] || [ "$largest" -gt 12000000 ]; then
    echo "the release wasm grew past its budget (3 MB before the first face, 12 MB a module)" >&2
    exit 1
fi
(
    cd tests/browser
    node page.test.mjs ../../dist "${BROWSER_OUT:-../../target/browser}"
)
