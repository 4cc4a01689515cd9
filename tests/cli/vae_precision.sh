#!/bin/sh
# --vae-precision: auto follows --precision (f32 here: the same file as f32), bf16 runs, a bad
# value is a usage error naming the choices.
# usage: vae_precision.sh SDXL_BINARY MODELS_DIR WORK_DIR
set -u
SDXL=$1
MODEL=$2/tiny_sd_xl_base.safetensors
W=$3
rm -rf "$W" && mkdir -p "$W" || exit 1
fail=0
ok() { echo "ok: $1"; }
bad() { echo "FAIL: $1"; fail=1; }
COMMON="-m $MODEL -W 64 -H 64 --steps 2 --cfg 5 --precision f32 -t 2 -q -p fox -s 3"
for vp in f32 bf16 auto; do
    $SDXL generate $COMMON --vae-precision $vp -o "$W/$vp.png" && [ -s "$W/$vp.png" ] && ok "vae $vp" || bad "vae $vp"
done
cmp -s "$W/f32.png" "$W/auto.png" && ok "auto = f32 under --precision f32" || bad "auto differs from f32"
$SDXL generate $COMMON --vae-precision f16 -o "$W/x.png" 2> "$W/err.txt"
[ $? -eq 2 ] && grep -q '"f32", "bf16" or "auto"' "$W/err.txt" && ok "bad value: $(cat "$W/err.txt")" || bad "bad value"
[ $fail -eq 0 ] && echo "vae_precision: all passed"
exit $fail
