#!/bin/sh
# `sdxl devices` and `sdxl generate --device vulkan` on the tiny model: a Vulkan device is listed,
# the image is written with the same generation metadata as on the CPU, and a missing device is
# refused with a clear error. CI runs it on lavapipe.
# usage: vulkan.sh SDXL_BINARY MODELS_DIR WORK_DIR
set -u
SDXL=$1
M=$2
W=$3
rm -rf "$W" && mkdir -p "$W" || exit 1
fail=0
ok() { echo "ok: $1"; }
bad() { echo "FAIL: $1"; fail=1; }

out=$("$SDXL" devices) || bad "devices exit"
echo "$out"
echo "$out" | grep -q "^vulkan:0" && echo "$out" | grep -q "memory: .* GiB device-local" \
  && ok "devices lists a Vulkan device with its memory" || bad "devices lists no Vulkan device"

args="-m $M/tiny_sd_xl_base.safetensors -p 'a red fox in the snow' -W 64 -H 64 --steps 3 --seed 7 --precision f32 -q"
eval "\"$SDXL\" generate $args -o \"$W/cpu.png\"" || bad "generate on cpu"
eval "\"$SDXL\" generate $args --device vulkan -o \"$W/vk.png\"" && ok "generate --device vulkan" \
  || bad "generate --device vulkan"
"$SDXL" meta "$W/cpu.png" > "$W/cpu.txt" && "$SDXL" meta "$W/vk.png" > "$W/vk.txt" \
  && cmp -s "$W/cpu.txt" "$W/vk.txt" && ok "same PNG metadata: $(tail -n 1 "$W/vk.txt")" || bad "metadata differs"

eval "\"$SDXL\" generate $args --device vulkan:99 -o \"$W/none.png\"" > /dev/null 2> "$W/err.txt"
[ $? -ne 0 ] && grep -q "vulkan:99" "$W/err.txt" && ok "missing device refused: $(cat "$W/err.txt")" \
  || bad "missing device"
eval "\"$SDXL\" generate $args --device tpu -o \"$W/none.png\"" > /dev/null 2> "$W/err.txt"
[ $? -ne 0 ] && grep -q "device" "$W/err.txt" && ok "unknown device refused: $(cat "$W/err.txt")" || bad "unknown device"
exit $fail
