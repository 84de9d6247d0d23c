#!/usr/bin/env bash
# Installs what the browser demo needs to build offline, once per machine:
# the wasm32 target, trunk 0.21.14, the wasm-bindgen-cli of Cargo.lock and
# wasm-opt (binaryen 132, from npm: Debian's 108 breaks the module).
# Usage: `./web/setup.sh && trunk serve` (then open http://127.0.0.1:8080).
set -euo pipefail
cd "$(dirname "$0")/.."

WASM_BINDGEN=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
TRUNK=0.21.14
BINARYEN=132

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
# npm's binaryen is the C++ tool compiled to wasm, run by Node: no compiler
# needed. Trunk runs the `wasm-opt` it finds on PATH when its version is the
# one Trunk.toml names; ~/.cargo/bin is on a Rust user's PATH.
if ! wasm-opt --version 2>/dev/null | grep -q "(version_$BINARYEN)"; then
    echo "installing wasm-opt (binaryen $BINARYEN, from npm, once)" >&2
    PREFIX="${XDG_CACHE_HOME:-$HOME/.cache}/rgflow/binaryen-$BINARYEN"
    npm install --prefix "$PREFIX" --no-audit --no-fund --silent "binaryen@$BINARYEN.0.0"
    BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
    ln -sf "$PREFIX/node_modules/binaryen/bin/wasm-opt" "$BIN/wasm-opt"
    wasm-opt --version | grep -q "(version_$BINARYEN)" || {
        echo "wasm-opt $BINARYEN is in $BIN, but another wasm-opt comes first on PATH: $(command -v wasm-opt)" >&2
        exit 1
    }
fi
grep -q "wasm_opt = \"version_$BINARYEN\"" Trunk.toml || {
    echo "Trunk.toml's [tools] wasm_opt must be version_$BINARYEN" >&2
    exit 1
}
grep -q "wasm_bindgen = \"$WASM_BINDGEN\"" Trunk.toml || {
    echo "Trunk.toml's [tools] wasm_bindgen must be $WASM_BINDGEN (Cargo.lock)" >&2
    exit 1
}
