#!/bin/sh
# `sdxl generate --control ...` and `sdxl preprocess` on the tiny models: a ControlNet request, its
# infotext and --from, a control image of another aspect ratio (resized), several units, and each
# bad input giving one error line that names the field or file.
# usage: controlnet.sh SDXL_BINARY MODELS_DIR WORK_DIR
set -u
SDXL=$1
MODEL=$2/tiny_sd_xl_base.safetensors
CN=$2/tiny-sdxl-controlnet
W=$3
rm -rf "$W" && mkdir -p "$W" || exit 1
fail=0
ok() { echo "ok: $1"; }
bad() { echo "FAIL: $1"; fail=1; }

# a 64x64 source picture and a 96x48 one (another aspect ratio)
$SDXL generate -m "$MODEL" -p src -W 64 -H 64 --steps 1 --precision f32 -q -s 3 -o "$W/src.png" || { echo "FAIL: src"; exit 1; }
$SDXL generate -m "$MODEL" -p wide -W 96 -H 48 --steps 1 --precision f32 -q -s 4 -o "$W/wide.png" || { echo "FAIL: wide"; exit 1; }

# preprocess alone
if $SDXL preprocess canny --low 100 --high 200 "$W/src.png" -o "$W/edges.png" 2> "$W/err.txt"; then ok "preprocess canny"
else bad "preprocess canny: $(cat "$W/err.txt")"; fi
$SDXL preprocess invert "$W/edges.png" -o "$W/inv.png" 2> /dev/null && ok "preprocess invert" || bad "preprocess invert"
$SDXL preprocess tile --factor 4 --sigma 1 --size 32x16 --resize crop "$W/src.png" -o "$W/tile.png" 2> /dev/null \
    && ok "preprocess tile with fit" || bad "preprocess tile"

# one unit, in-request canny
if $SDXL generate -m "$MODEL" -p "a house" -W 64 -H 64 --steps 2 --precision f32 -q -s 5 \
    --control "$CN" --control-image "$W/src.png" --control-preprocess canny:100:200 --control-scale 0.7 \
    --control-end 0.5 --control-resize crop -o "$W/one.png" 2> "$W/err.txt"; then ok "one unit"
else bad "one unit: $(cat "$W/err.txt")"; fi
$SDXL meta "$W/one.png" > "$W/meta.txt" 2>&1
if grep -q 'ControlNet 0: "Module: canny, Model: tiny-sdxl-controlnet, Weight: 0.7, Resize Mode: Crop and Resize, Threshold A: 100, Threshold B: 200, Guidance Start: 0, Guidance End: 0.5' "$W/meta.txt"; then
    ok "infotext unit"
else bad "infotext unit: $(cat "$W/meta.txt")"; fi
# --from restores the unit; the control image is given again (images are not stored)
if $SDXL generate -m "$MODEL" --from "$W/one.png" --control-image "$W/src.png" --precision f32 -q -o "$W/again.png" 2> "$W/err.txt" \
    && cmp -s "$W/one.png" "$W/again.png"; then ok "--from reproduces the ControlNet image"
else bad "--from: $(cat "$W/err.txt")"; fi

# two units, the second by name in --control-dir, another aspect ratio resized
if $SDXL generate -m "$MODEL" -p "a house" -W 64 -H 64 --steps 2 --precision f32 -q -s 5 \
    --control "$CN" --control-image "$W/edges.png" --control-end 0.5 \
    --control tiny-sdxl-controlnet --control-dir "$2" --control-image "$W/wide.png" --control-start 0.5 \
    --control-resize fill -o "$W/two.png" 2> "$W/err.txt"; then ok "two units, wide image fitted"
else bad "two units: $(cat "$W/err.txt")"; fi
$SDXL meta "$W/two.png" | grep -q 'ControlNet 1: "Module: none, Model: tiny-sdxl-controlnet, Weight: 1, Resize Mode: Resize and Fill' \
    && ok "infotext two units" || bad "infotext two units"

# bad inputs: one error line naming the field or file, no output
printf 'this is not an image' > "$W/corrupt.png"
head -c 100000 "$CN/diffusion_pytorch_model.safetensors" > "$W/truncated.safetensors"
# an SD 1.5-style ControlNet: control_model.* names, no SDXL add-embedding, 768-wide cross-attention
sd15() {
    h='{"control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":{"dtype":"F16","shape":[320,768],"data_offsets":[0,491520]},"control_model.input_hint_block.0.weight":{"dtype":"F16","shape":[1],"data_offsets":[491520,491522]},"control_model.time_embed.0.weight":{"dtype":"F16","shape":[1],"data_offsets":[491522,491524]}}'
    while [ $(( ${#h} % 8 )) -ne 0 ]; do h="$h "; done
    n=${#h}
    printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $((n & 255)) $(((n >> 8) & 255)) $(((n >> 16) & 255)) $(((n >> 24) & 255)))"
    printf '\000\000\000\000%s' "$h"
    head -c 491524 /dev/zero
}
sd15 > "$W/sd15_controlnet.safetensors"
expect() {
    name=$1; word=$2; shift 2
    rm -f "$W/out.png" "$W/err.txt"
    "$SDXL" generate -m "$MODEL" -p x -W 64 -H 64 --steps 1 --precision f32 "$@" -o "$W/out.png" -q 2> "$W/err.txt"
    rc=$?
    lines=$(wc -l < "$W/err.txt")
    if [ $rc -eq 0 ]; then bad "$name: exit 0"
    elif [ -e "$W/out.png" ]; then bad "$name: wrote out.png"
    elif [ "$lines" -ne 1 ]; then bad "$name: $lines error lines: $(cat "$W/err.txt")"
    elif ! grep -q -- "$word" "$W/err.txt"; then bad "$name: error does not mention $word: $(cat "$W/err.txt")"
    else echo "ok: $name (exit $rc): $(cat "$W/err.txt")"
    fi
}
expect "SD 1.5 ControlNet" "SD 1.x/2.x ControlNet" --control "$W/sd15_controlnet.safetensors" --control-image "$W/src.png"
expect "truncated ControlNet" truncated.safetensors --control "$W/truncated.safetensors" --control-image "$W/src.png"
expect "control image not an image" corrupt.png --control "$CN" --control-image "$W/corrupt.png"
expect "scale out of range" "controls\[0\].scale" --control "$CN" --control-image "$W/src.png" --control-scale 5
expect "start after end" "controls\[0\].guidance_start" --control "$CN" --control-image "$W/src.png" --control-start 0.8 --control-end 0.2
expect "missing ControlNet" "controls\[0\].model" --control "$W/none.safetensors" --control-image "$W/src.png"
expect "no control image" "needs --control-image" --control "$CN"
expect "bad preprocessor" "preprocess" --control "$CN" --control-image "$W/src.png" --control-preprocess sobel
expect "bad resize mode" "control-resize" --control "$CN" --control-image "$W/src.png" --control-resize stretch
expect "a UNet is not a ControlNet" "not a ControlNet" --control "$2/tiny-sdxl-base/unet" --control-image "$W/src.png"
# the same unit through `sdxl worker` (names resolved in its folders): the same pixels as the CLI
$SDXL generate -m "$MODEL" -p "a house" -W 64 -H 64 --steps 2 --precision f32 -q -s 5 --control "$CN" \
    --control-image "$W/src.png" --control-preprocess canny:100:200 --control-scale 0.7 --control-end 0.5 \
    -o "$W/cli_just.png" 2> /dev/null || bad "CLI run for the worker comparison"
mkdir -p "$W/wout"
printf '%s\n' '{"op":"submit","id":"c1","prompt":"a house","width":64,"height":64,"steps":2,"seed":5,"controls":[{"model":"tiny-sdxl-controlnet","image":"src.png","scale":0.7,"guidance_end":0.5,"preprocess":"canny:100:200"}]}' \
    '{"op":"submit","id":"c2","prompt":"a house","width":64,"height":64,"steps":2,"controls":[{"model":"../tiny-sdxl-controlnet","image":"src.png"}]}' \
    '{"op":"shutdown","wait":true}' |
    $SDXL worker --models-dir "$2" -m tiny_sd_xl_base --controlnet-dir "$2" --input-dir "$W" --output-root "$W/wout" \
        --precision f32 > "$W/worker.txt" 2> "$W/worker_err.txt"
WIMG=$(ls "$W"/wout/*.png 2> /dev/null | head -n 1)
if [ -n "$WIMG" ] && $SDXL meta "$WIMG" | grep -q 'ControlNet 0: "Module: canny, Model: tiny-sdxl-controlnet, Weight: 0.7'; then
    ok "worker: ControlNet unit in the infotext"
else bad "worker ControlNet job: $(cat "$W/worker.txt" "$W/worker_err.txt" | tail -n 5)"; fi
if [ -n "$WIMG" ] && [ "$($SDXL meta "$WIMG" | head -n 2)" = "$($SDXL meta "$W/cli_just.png" | head -n 2)" ]; then
    ok "worker: infotext equals the CLI's"
else bad "worker: infotext differs from the CLI's"; fi
if [ -n "$WIMG" ] && /usr/bin/python3 -c 'import cv2' 2> /dev/null; then
    /usr/bin/python3 -c 'import cv2, sys; a = cv2.imread(sys.argv[1]); b = cv2.imread(sys.argv[2]); sys.exit(0 if a is not None and b is not None and a.shape == b.shape and (a == b).all() else 1)' \
        "$WIMG" "$W/cli_just.png" && ok "worker: pixels equal the CLI's" || bad "worker: pixels differ from the CLI's"
fi
grep '"id":"c2"' "$W/worker.txt" | grep -q '"field":"controls\[0\].model"' && ok "worker: '..' in a ControlNet name refused" \
    || bad "worker: '..' in a ControlNet name: $(grep '"c2"' "$W/worker.txt" | tail -n 1)"

exit $fail
