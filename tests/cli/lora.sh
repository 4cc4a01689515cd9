#!/bin/sh
# LoRA on the command line: bad files and an escaping tag each give one error line and a non-zero
# exit, and the next generation is byte-identical; a good LoRA changes the image; `sdxl info` reads it.
# usage: lora.sh SDXL_BINARY MODELS_DIR WORK_DIR
set -u
SDXL=$1
M=$2
MODEL=$M/tiny_sd_xl_base.safetensors
W=$3
rm -rf "$W" && mkdir -p "$W" || exit 1
fail=0
run() { "$SDXL" generate -m "$MODEL" -p "a red boat" -W 64 -H 64 --steps 2 --precision f32 -q -s 5 "$@"; }

# safetensors file NAME with header JSON and DATA bytes from a file
u64le() { n=$1; i=0; while [ $i -lt 8 ]; do printf "\\$(printf %03o $((n % 256)))"; n=$((n / 256)); i=$((i + 1)); done; }
mkst() { len=$(printf %s "$2" | wc -c); { u64le "$len"; printf %s "$2"; cat "$3"; } > "$W/$1"; }
head -c 256 /dev/zero > "$W/z256"
head -c 160 /dev/zero > "$W/z160"
{ printf '\000\000\300\177'; head -c 252 /dev/zero; } > "$W/nan256"
Q=lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q
mkst sd15.safetensors "{\"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight\":{\"dtype\":\"F32\",\"shape\":[1,32],\"data_offsets\":[0,128]},\"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight\":{\"dtype\":\"F32\",\"shape\":[32,1],\"data_offsets\":[128,256]}}" "$W/z256"
mkst rank.safetensors "{\"$Q.lora_down.weight\":{\"dtype\":\"F32\",\"shape\":[1,32],\"data_offsets\":[0,128]},\"$Q.lora_up.weight\":{\"dtype\":\"F32\",\"shape\":[16,2],\"data_offsets\":[128,256]}}" "$W/z256"
mkst shape.safetensors "{\"$Q.lora_down.weight\":{\"dtype\":\"F32\",\"shape\":[1,32],\"data_offsets\":[0,128]},\"$Q.lora_up.weight\":{\"dtype\":\"F32\",\"shape\":[8,1],\"data_offsets\":[128,160]}}" "$W/z160"
mkst nan.safetensors "{\"$Q.lora_down.weight\":{\"dtype\":\"F32\",\"shape\":[1,32],\"data_offsets\":[0,128]},\"$Q.lora_up.weight\":{\"dtype\":\"F32\",\"shape\":[32,1],\"data_offsets\":[128,256]}}" "$W/nan256"
head -c 50000 "$M/tiny_sdxl_lora_kohya.safetensors" > "$W/trunc.safetensors"

run -o "$W/ref.png" || { echo "FAIL: reference image"; exit 1; }
expect() {
    name=$1; word=$2; shift 2
    rm -f "$W/out.png" "$W/err.txt"
    run "$@" -o "$W/out.png" 2> "$W/err.txt"
    rc=$?
    lines=$(wc -l < "$W/err.txt")
    if [ $rc -eq 0 ]; then echo "FAIL: $name: exit 0"; fail=1
    elif [ -e "$W/out.png" ]; then echo "FAIL: $name: wrote out.png"; fail=1
    elif [ "$lines" -ne 1 ]; then echo "FAIL: $name: $lines error lines:"; cat "$W/err.txt"; fail=1
    elif ! grep -q -- "$word" "$W/err.txt"; then echo "FAIL: $name: error does not mention $word:"; cat "$W/err.txt"; fail=1
    else echo "ok: $name (exit $rc): $(cat "$W/err.txt")"
    fi
    run -o "$W/again.png" && cmp -s "$W/ref.png" "$W/again.png" || { echo "FAIL: $name: next image differs"; fail=1; }
}
expect "SD 1.5 LoRA" "SD 1.x" --lora "$W/sd15.safetensors"
expect "wrong shape" "differ" --lora "$W/shape.safetensors"
expect "mismatched rank" "mismatched rank" --lora "$W/rank.safetensors"
expect "NaN factor" "non-finite" --lora "$W/nan.safetensors"
expect "truncated file" "trunc.safetensors" --lora "$W/trunc.safetensors"
expect "tag escaping the folder" ".." -p "a red boat <lora:../../etc/passwd:1>" --lora-dir "$M"
expect "missing LoRA" "nope" --lora "$W/nope.safetensors"

run --lora "$M/tiny_sdxl_lora_kohya.safetensors:0.8" -o "$W/lora.png" || { echo "FAIL: LoRA generation"; fail=1; }
cmp -s "$W/ref.png" "$W/lora.png" && { echo "FAIL: the LoRA did not change the image"; fail=1; }
"$SDXL" info "$M/tiny_sdxl_lora_kohya.safetensors" | grep -q "unet 367, te1 18, te2 18" || { echo "FAIL: info"; fail=1; }
[ $fail = 0 ] && echo "all LoRA CLI checks passed"
exit $fail
