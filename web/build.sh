#!/usr/bin/env bash
# Builds the static site into one folder (default web/dist): the page, its
# JS glue and wasm, and the bundled mass model. Any static file server can
# serve it, and it works offline. Usage: web/build.sh [OUT]
#
# Needs the wasm32 target and the wasm-bindgen CLI of the version in
# Cargo.lock:
#   rustup target add wasm32-unknown-unknown
#   cargo install wasm-bindgen-cli --version VERSION
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-web/dist}
want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print }' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
if [ "$have" != "$want" ]; then
  echo "web/build.sh: needs wasm-bindgen-cli $want (found: ${have:-none}):" >&2
  echo "  cargo install wasm-bindgen-cli --version $want" >&2
  exit 2
fi
cargo build --quiet --release --package engine-web --target wasm32-unknown-unknown
rm -rf "$out"
mkdir -p "$out/model"
wasm-bindgen --target web --no-typescript --out-dir "$out/pkg" \
  "${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/release/engine_web.wasm"
cp web/www/index.html web/www/app.js "$out/"
model=data/models/cbis-w025
files=()
for f in "$model"/*.safetensors; do
  cp "$f" "$out/model/"
  files+=("\"$(basename "$f")\"")
done
printf '{ "name": "%s", "files": [%s] }\n' "$(basename "$model")" "$(IFS=,; echo "${files[*]}")" \
  > "$out/model/manifest.json"
echo "$out: serve it with \`python3 -m http.server --directory $out 8000\` and open http://localhost:8000"
