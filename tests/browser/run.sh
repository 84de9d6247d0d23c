#!/usr/bin/env bash
# The browser half of the test suite: wasm-bindgen tests of the demo's engine
# in headless Chromium (CPU backend and WebGPU), then the release site built
# with trunk and the end-to-end page test. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/../.."

./web/setup.sh
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium chromium-driver
fi

# wasm-bindgen-test-runner drives Chromium through chromedriver with the
# flags of web/webdriver.json (WebGPU on SwiftShader). Release profile: the
# same build the site uses, and the model is too slow unoptimised.
echo "== wasm-bindgen tests in headless Chromium" >&2
(
    cd web
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
    CHROMEDRIVER="$(command -v chromedriver)" \
    WASM_BINDGEN_TEST_TIMEOUT=1800 \
        cargo test --release --target wasm32-unknown-unknown --test browser
)

echo "== site build and page test" >&2
trunk build --release
(
    cd tests/browser
    npm ci --no-audit --no-fund --silent
    node page.test.mjs ../../dist "${BROWSER_OUT:-../../target/browser}"
)
