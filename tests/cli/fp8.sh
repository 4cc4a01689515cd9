#!/bin/sh
# fp8-stored checkpoints from the CLI: the unit test writes the tiny model with its UNet in
# F8_E4M3 (and everything in F8_E5M2) plus reference files holding the same values in F32;
# `sdxl info` lists them and `sdxl generate` from each fp8 file gives the reference's pixels.
# usage: fp8.sh SDXL_BINARY FP8_TEST_BINARY MODELS_DIR WORK_DIR
set -u
SDXL=$1
MAKE=$2
M=$3
W=$4
rm -rf "$W" && mkdir -p "$W" || exit 1
fail=0
ok() { echo "ok: $1"; }
bad() { echo "FAIL: $1"; fail=1; }

"$MAKE" "$W" > "$W/make.txt" 2>&1 && ok "fp8 files written and checked" || { cat "$W/make.txt"; bad "fp8 unit test"; }
for f in e4m3 e5m2; do
    # the same base name in two folders: the images' metadata (which names the model) match too
    for v in "" _ref; do
        mkdir -p "$W/$f$v" && mv "$W/tiny_fp8_$f$v.safetensors" "$W/$f$v/tiny.safetensors" \
            && cp "$M/tiny_sd_xl_base.yaml" "$W/$f$v/tiny.yaml" || bad "move $f$v"
    done
    DT=$(echo "F8_$f" | tr a-z A-Z)
    out=$("$SDXL" info "$W/$f/tiny.safetensors") || bad "info $f exit"
    echo "$out" | grep -q "^unet: base, 3 levels, channels 32/32/64" && echo "$out" | grep -q " $DT .*model.diffusion_model" \
        && ok "info $f: config and $DT tensors" || bad "info $f"
    for p in f32 bf16; do
        for v in "" _ref; do
            "$SDXL" generate -m "$W/$f$v/tiny.safetensors" -W 64 -H 64 --steps 2 --cfg 5 --precision $p -t 2 -q \
                -p "a red fox" -s 7 -o "$W/$f$v-$p.png" || bad "generate $f$v $p exited $?"
        done
        [ -s "$W/$f-$p.png" ] && cmp -s "$W/$f-$p.png" "$W/${f}_ref-$p.png" \
            && ok "generate $f $p: identical to the F32 reference's image" || bad "generate $f $p differs from the reference"
    done
done
[ $fail -eq 0 ] && echo "fp8: all passed"
exit $fail
