#!/bin/sh
# A1111 parity end to end: `sdxl tokenize --steps` schedules, a two-pass hires-fix generation on the
# tiny model (PNG at the target size, infotext read back, --from byte-identical), A1111 sampler
# names, and `sdxl noise` against torch's generator (the rng golden tensors, byte for byte).
# usage: a1111.sh SDXL_BINARY MODELS_DIR GOLDEN_CASES_DIR WORK_DIR
set -u
SDXL=$1
MODEL=$2/tiny_sd_xl_base.safetensors
CASES=$3
W=$4
rm -rf "$W" && mkdir -p "$W" || exit 1
fail=0
ok() { echo "ok: $1"; }
bad() { echo "FAIL: $1"; fail=1; }
TAB=$(printf '\t')

# 1. prompt schedules
out=$("$SDXL" tokenize --steps 10 "a [b:c:0.5] [x|y]" | head -3)
want=$(printf '1\ta b x\n2\ta b y\n3\ta b x')
[ "$out" = "$want" ] && ok "tokenize --steps: edit + alternation" || bad "tokenize --steps: [$out]"
out=$("$SDXL" tokenize --steps 20 --hires-steps 10 "[cat:dog:25]")
[ "$out" = "5${TAB}cat
10${TAB}dog" ] && ok "tokenize --hires-steps offsets the first pass" || bad "tokenize --hires-steps: [$out]"
out=$("$SDXL" tokenize --steps 4 "a AND b :0.5")
[ "$out" = "# part 1 weight 1
4${TAB}a
# part 2 weight 0.5
4${TAB} b" ] && ok "tokenize --steps: AND parts" || bad "tokenize AND: [$out]"

# 2. hires fix: 64x64 first pass, x2 latent upscale, 3 second-pass steps
C="-m $MODEL --precision f32 -t 2 -q"
if "$SDXL" generate $C -W 64 -H 64 --steps 4 --cfg 5 -s 5 -p "a [red:blue:0.5] fox" --sampler "DPM++ 2M" \
    --schedule Karras --hr-scale 2 --hr-steps 3 --hr-denoising-strength 0.6 -o "$W/hr.png"; then
    size=$(od -An -tu1 -j16 -N8 "$W/hr.png" | tr -s ' ' | sed 's/^ //')
    [ "$size" = "0 0 0 128 0 0 0 128" ] && ok "hires PNG is 128x128" || bad "hires PNG size [$size]"
else
    bad "hires generate exited $?"
fi
"$SDXL" meta "$W/hr.png" > "$W/hr.txt" || bad "meta of the hires PNG"
for want in "Size: 64x64" "Denoising strength: 0.6" "Hires upscale: 2" "Hires steps: 3" "Hires upscaler: Latent" \
            "Sampler: DPM++ 2M" "Schedule type: Karras" "CFG scale: 5,"; do
    grep -qF "$want" "$W/hr.txt" && ok "infotext has '$want'" || bad "infotext lacks '$want': $(cat "$W/hr.txt")"
done
"$SDXL" generate $C --from "$W/hr.png" -o "$W/hr_from.png" || bad "--from hires exited non-zero"
# the same hires request as an A1111 txt2img body through `sdxl worker`: the same infotext and pixels
mkdir -p "$W/wk"
printf '%s\n' '{"op":"submit","id":"h","request":{"prompt":"a [red:blue:0.5] fox","width":64,"height":64,"steps":4,"cfg_scale":5,"seed":5,"sampler_name":"DPM++ 2M","scheduler":"Karras","enable_hr":true,"hr_scale":2,"hr_second_pass_steps":3,"denoising_strength":0.6,"hr_upscaler":"Latent","hr_sampler_name":"Use same sampler","hr_prompt":""}}' \
    '{"op":"shutdown","wait":true}' |
    "$SDXL" worker --models-dir "$2" -m tiny_sd_xl_base --output-root "$W/wk" --precision f32 -t 2 > "$W/wk.txt" 2> /dev/null
WIMG=$(ls "$W"/wk/*.png 2> /dev/null | head -n 1)
if [ -n "$WIMG" ] && [ "$("$SDXL" meta "$WIMG" | sed -n 2p | sed 's/, Model: [^,]*//')" = "$("$SDXL" meta "$W/hr.png" | sed -n 2p | sed 's/, Model: [^,]*//')" ]; then
    ok "worker: A1111 hires body gives the CLI's infotext"
else bad "worker hires: $(tail -n 2 "$W/wk.txt")"; fi
if [ -n "$WIMG" ] && /usr/bin/python3 -c 'import cv2' 2> /dev/null; then
    /usr/bin/python3 -c 'import cv2, sys; a = cv2.imread(sys.argv[1]); b = cv2.imread(sys.argv[2]); sys.exit(0 if a is not None and b is not None and a.shape == b.shape and (a == b).all() else 1)' \
        "$WIMG" "$W/hr.png" && ok "worker: hires pixels equal the CLI's" || bad "worker: hires pixels differ"
fi
cmp -s "$W/hr.png" "$W/hr_from.png" && ok "--from reproduces the hires PNG byte for byte" || bad "--from hires differs"
"$SDXL" generate $C -W 64 -H 64 --steps 3 --cfg 5 -s 6 -p "a fox" --hr-upscaler Lanczos --hr-resize 96x80 \
    -o "$W/hr_lz.png" || bad "Lanczos hires exited non-zero"
size=$(od -An -tu1 -j16 -N8 "$W/hr_lz.png" | tr -s ' ' | sed 's/^ //')
[ "$size" = "0 0 0 96 0 0 0 80" ] && ok "Lanczos hires PNG is 96x80" || bad "Lanczos hires size [$size]"
"$SDXL" generate $C --from "$W/hr_lz.png" -o "$W/hr_lz2.png" && cmp -s "$W/hr_lz.png" "$W/hr_lz2.png" \
    && ok "--from reproduces the Lanczos hires PNG" || bad "--from Lanczos hires differs"

"$SDXL" generate -m "$W/none.safetensors" -p x -W 64 -H 64 --hr-upscaler ESRGAN_4x -o "$W/bad.png" 2> "$W/err.txt"
[ $? -eq 2 ] && grep -q "hr_upscaler" "$W/err.txt" && ok "unknown upscaler refused before the model loads" \
    || bad "unknown upscaler: $(cat "$W/err.txt")"

# a box of another aspect ratio: A1111 covers it (64x64 -> 128x128) and crops the latents to 128x64
"$SDXL" generate $C -W 64 -H 64 --steps 3 --cfg 5 -s 8 -p "a fox" --hr-resize 128x64 --hr-steps 2 -o "$W/hr_crop.png" \
    || bad "hires crop exited non-zero"
size=$(od -An -tu1 -j16 -N8 "$W/hr_crop.png" | tr -s ' ' | sed 's/^ //')
[ "$size" = "0 0 0 128 0 0 0 64" ] && ok "hires --hr-resize 128x64 from 64x64 is 128x64" || bad "hires crop size [$size]"
"$SDXL" meta "$W/hr_crop.png" | grep -qF "Hires resize: 128x64" && ok "infotext has 'Hires resize: 128x64'" \
    || bad "infotext lacks Hires resize"
"$SDXL" generate $C --from "$W/hr_crop.png" -o "$W/hr_crop2.png" && cmp -s "$W/hr_crop.png" "$W/hr_crop2.png" \
    && ok "--from reproduces the cropped hires PNG" || bad "--from cropped hires differs"

# ENSD: the ancestral noise comes from seed + delta; written to the infotext and restored by --from
"$SDXL" generate $C -W 64 -H 64 --steps 3 -s 9 -p x --sampler "Euler a" -o "$W/e0.png" || bad "Euler a exited non-zero"
"$SDXL" generate $C -W 64 -H 64 --steps 3 -s 9 -p x --sampler "Euler a" --ensd 31337 -o "$W/e1.png" || bad "--ensd exited"
cmp -s "$W/e0.png" "$W/e1.png" && bad "ENSD did not change the ancestral noise" || ok "ENSD changes the ancestral noise"
"$SDXL" meta "$W/e1.png" | grep -qF "ENSD: 31337" && ok "infotext has 'ENSD: 31337'" || bad "infotext lacks ENSD"
"$SDXL" meta "$W/e0.png" | grep -qF "ENSD" && bad "ENSD written without a delta" || ok "no ENSD without a delta"
"$SDXL" generate $C --from "$W/e1.png" -o "$W/e2.png" && cmp -s "$W/e1.png" "$W/e2.png" \
    && ok "--from reproduces the ENSD image" || bad "--from ENSD differs"

# 3. A1111 sampler names run the k-diffusion path, with their own names in the infotext
for s in "DPM fast" "DPM adaptive" "DPM++ 2M SDE Heun" "Restart" "DDIM CFG++" "ipndm_v" "DPM++ 2M SDE"; do
    "$SDXL" generate $C -W 64 -H 64 --steps 3 -s 1 -p x --sampler "$s" -o "$W/s.png" \
        && "$SDXL" meta "$W/s.png" | grep -qF "Sampler: $s," && ok "sampler '$s'" || bad "sampler '$s'"
done
"$SDXL" generate $C -W 64 -H 64 --steps 2 -p x --prediction q -o "$W/bad.png" 2> "$W/err.txt"
[ $? -eq 2 ] && grep -q "prediction" "$W/err.txt" && ok "bad --prediction: $(cat "$W/err.txt")" || bad "bad --prediction"

# 4. sdxl noise == torch.randn of the rng golden, byte for byte
F="$CASES/rng.safetensors"
hlen=$(od -An -tu8 -N8 "$F" | tr -d ' ')
dd if="$F" bs=1 skip=8 count="$hlen" 2>/dev/null > "$W/header.json"
for case in "42 1,4,128,128 1x4x128x128" "1234 1,4,8,8 1x4x8x8" "0 1,4,128,128 1x4x128x128"; do
    set -- $case
    offs=$(sed -n "s/.*\"randn\/$1\/$3\":{[^}]*\"data_offsets\":\[\([0-9]*\),\([0-9]*\)\].*/\1 \2/p" "$W/header.json")
    [ -n "$offs" ] || { bad "rng golden has no randn/$1/$3"; continue; }
    a=${offs% *}; b=${offs#* }
    dd if="$F" bs=4 skip=$(( (8 + hlen + a) / 4 )) count=$(( (b - a) / 4 )) 2>/dev/null > "$W/ref.f32"
    if [ $(( (8 + hlen + a) % 4 )) -ne 0 ]; then
        dd if="$F" bs=1 skip=$((8 + hlen + a)) count=$((b - a)) 2>/dev/null > "$W/ref.f32"
    fi
    "$SDXL" noise --seed "$1" --shape "$2" --rng torch -o "$W/noise.f32" || bad "noise exited non-zero"
    cmp -s "$W/ref.f32" "$W/noise.f32" && ok "sdxl noise seed $1 shape $2 == torch.randn" || bad "noise seed $1 differs"
done
"$SDXL" noise --seed 42 --shape 1,4,8,8 -o "$W/n.npy" && [ "$(head -c 6 "$W/n.npy" | tail -c 5)" = "NUMPY" ] \
    && [ $(wc -c < "$W/n.npy") -eq $((128 + 256 * 4)) ] && ok "noise .npy" || bad "noise .npy"
# Philox: seed 0, first call, element 0 is counter (0,0,0,0) under key (0,0): Random123's first
# philox4x32-10 known-answer vector (6627e8d5 e169c58d ...) through A1111's Box-Muller
out=$("$SDXL" noise --seed 0 --shape 1,1,1,1 --rng philox)
[ "$out" = "-0.924662411" ] && ok "sdxl noise philox == Random123 KAT 0 + Box-Muller" || bad "philox KAT: $out"
out=$("$SDXL" noise --seed 42 --shape 1,1,1,2 --subseed 7 --subseed-strength 0)
[ "$(echo "$out" | head -1)" = "0.336690366" ] && ok "subseed strength 0 keeps the seed's noise" || bad "subseed 0: $out"
"$SDXL" noise --seed 42 --shape 1,1,2,2 --subseed 7 --subseed-strength 0.5 > /dev/null && ok "subseed 0.5 runs" \
    || bad "subseed 0.5"
exit $fail
