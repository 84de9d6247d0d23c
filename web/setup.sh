#!/usr/bin/env bash
# Installs what the browser demo needs to build offline, once per machine:
# the wasm32 target, trunk 0.21.14 and the wasm-bindgen-cli of Cargo.lock.
# Usage: `./web/setup.sh && trunk serve` (then open http://127.0.0.1:8080).
set -euo pipefail
cd "$(dirname "$0")/.."

WASM_BINDGEN=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
TRUNK=0.21.14

rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

if ! trunk --version 2>/dev/null | grep -q " $TRUNK"; then
    echo "installing trunk $TRUNK (a few minutes, once)" >&2
    cargo install --locked trunk --version "$TRUNK"
fi
# Without --locked: wasm-bindgen-cli's own lock file pins crates that no longer build.
if ! wasm-bindgen --version 2>/dev/null | grep -q " $WASM_BINDGEN"; then
    echo "installing wasm-bindgen-cli $WASM_BINDGEN (a few minutes, once)" >&2
    cargo install wasm-bindgen-cli --version "$WASM_BINDGEN"
fi
grep -q "wasm_bindgen = \"$WASM_BINDGEN\"" Trunk.toml || {
    echo "Trunk.toml's [tools] wasm_bindgen must be $WASM_BINDGEN (Cargo.lock)" >&2
    exit 1
}
