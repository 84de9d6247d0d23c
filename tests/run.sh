#!/usr/bin/env bash
# The whole test suite (the README's test command; `.ci/run` calls it):
# native tests of every crate (models on burn-flex, burn-ndarray and
# burn-wgpu), then the browser tests (wasm in headless Chromium, the page).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-features
./tests/browser/run.sh
