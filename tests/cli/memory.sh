#!/bin/sh
# --max-memory: a bound the plan cannot meet fails before any step with the plan in the message;
# a roomy one runs and gives the unbounded run's pixels; a malformed size is a usage error.
# usage: memory.sh SDXL_BINARY MODELS_DIR WORK_DIR
set -u
SDXL=$1
MODEL=$2/tiny_sd_xl_base.safetensors
W=$3
rm -rf "$W" && mkdir -p "$W" || exit 1
fail=0
ok() { echo "ok: $1"; }
bad() { echo "FAIL: $1"; fail=1; }
COMMON="-m $MODEL -W 128 -H 128 --steps 2 --cfg 5 --precision f32 -t 2 -p fox -s 3"
$SDXL generate $COMMON -q -o "$W/free.png" || bad "unbounded run"
$SDXL generate $COMMON -q --max-memory 4G -o "$W/bounded.png" && cmp -s "$W/free.png" "$W/bounded.png" \
    && ok "--max-memory 4G: same image" || bad "--max-memory 4G"
$SDXL generate $COMMON --max-memory 20M -o "$W/tight.png" > "$W/out.txt" 2> "$W/err.txt"
rc=$?
[ $rc -ne 0 ] && [ ! -e "$W/tight.png" ] && grep -q "max_memory: 0.02 GiB cannot hold" "$W/err.txt" \
    && grep -q "sub-batch of 1" "$W/err.txt" && ! grep -q "step 1/" "$W/err.txt" \
    && ok "--max-memory 20M fails before any step: $(tail -n 1 "$W/err.txt")" || { cat "$W/err.txt"; bad "--max-memory 20M"; }
$SDXL generate $COMMON --max-memory 6X -o "$W/x.png" 2> "$W/err.txt"
[ $? -eq 2 ] && grep -q "expected a size" "$W/err.txt" && ok "bad size: $(cat "$W/err.txt")" || bad "bad size"
[ $fail -eq 0 ] && echo "memory: all passed"
exit $fail
