#!/bin/sh
# `sdxl info`, `schedulers`, `tokenize`, `meta`: real output on good input, one clear error and a
# non-zero exit on bad input.
# usage: tools.sh SDXL_BINARY MODELS_DIR WORK_DIR
set -u
SDXL=$1
M=$2
W=$3
rm -rf "$W" && mkdir -p "$W" || exit 1
fail=0
ok() { echo "ok: $1"; }
bad() { echo "FAIL: $1"; fail=1; }

# info: layout, config and parameter counts from both layouts
out=$("$SDXL" info "$M/tiny_sd_xl_base.safetensors") || bad "info single file exit"
echo "$out" | grep -q "^layout: single-file" && ok "info single-file layout" || bad "info layout"
echo "$out" | grep -q "^unet: base, 3 levels, channels 32/32/64" && ok "info unet config" || bad "info unet config"
echo "$out" | grep -q "^vae: 4 levels" && ok "info vae config" || bad "info vae config"
out=$("$SDXL" info "$M/tiny-sdxl-refiner") || bad "info diffusers exit"
echo "$out" | grep -q "^layout: diffusers" && echo "$out" | grep -q "^unet: refiner, 4 levels" \
  && ok "info diffusers refiner" || bad "info diffusers refiner"
"$SDXL" info --json "$M/tiny-sdxl-base" > "$W/info.json" && grep -q '"kind":"base"' "$W/info.json" \
  && ok "info --json" || bad "info --json"

# info: bad files exit 1 with a message naming the problem
head -c 5000 "$M/tiny_sd_xl_base.safetensors" > "$W/trunc.safetensors"
"$SDXL" info "$W/trunc.safetensors" > /dev/null 2> "$W/err.txt"
[ $? -eq 1 ] && grep -q "trunc.safetensors" "$W/err.txt" && ok "info truncated: $(cat "$W/err.txt")" || bad "info truncated"
printf 'not a model' > "$W/junk.safetensors"
"$SDXL" info "$W/junk.safetensors" > /dev/null 2> "$W/err.txt"
[ $? -eq 1 ] && [ -s "$W/err.txt" ] && ok "info junk: $(cat "$W/err.txt")" || bad "info junk"
"$SDXL" info "$W/missing.safetensors" > /dev/null 2>&1
[ $? -eq 1 ] && ok "info missing file" || bad "info missing file"
"$SDXL" info > /dev/null 2>&1
[ $? -eq 2 ] && ok "info usage" || bad "info usage"

# schedulers: one canonical line per name, suggestions for unknown names
[ "$("$SDXL" schedulers resolve "DPM++ 2M SDE Karras")" = "sampler=dpmpp_2m_sde schedule=karras" ] \
  && ok "resolve a1111 legacy" || bad "resolve a1111 legacy"
[ "$("$SDXL" schedulers resolve k_euler_a)" = "sampler=euler_a schedule=default" ] && ok "resolve k_ alias" || bad "resolve k_ alias"
"$SDXL" schedulers resolve "Eulerr Z" > /dev/null 2> "$W/err.txt"
[ $? -ne 0 ] && grep -qi "euler" "$W/err.txt" && ok "resolve unknown suggests" || bad "resolve unknown"
"$SDXL" schedulers --json | grep -q '"dpmpp_2m"' && ok "schedulers --json" || bad "schedulers --json"

# tokenize: ids of both tokenizers; invalid UTF-8 is an error naming the offset
"$SDXL" tokenize "a photo of a cat" | grep -q "49406 320 1125 539 320 2368 49407" && ok "tokenize ids" || bad "tokenize ids"
"$SDXL" tokenize "$(printf 'ab\377c')" > /dev/null 2> "$W/err.txt"
[ $? -eq 1 ] && grep -q "offset 2" "$W/err.txt" && ok "tokenize invalid utf-8" || bad "tokenize invalid utf-8"

# meta: an image without metadata is an error, not a crash
"$SDXL" meta "$W/junk.safetensors" > /dev/null 2>&1
[ $? -eq 1 ] && ok "meta on a non-image" || bad "meta on a non-image"

[ $fail -eq 0 ] && echo "tools: all passed"
exit $fail
