#!/bin/sh
# sdxl generate end to end: the PNG exists, its parameters chunk parses back to the request,
# --from reproduces identical pixels, and a batch of 4 equals four single generations.
# usage: generate.sh SDXL_BINARY MODELS_DIR WORK_DIR
set -u
SDXL=$1
MODEL=$2/tiny_sd_xl_base.safetensors
W=$3
rm -rf "$W" && mkdir -p "$W" || exit 1
fail=0
ok() { echo "ok: $1"; }
bad() { echo "FAIL: $1"; fail=1; }
COMMON="-m $MODEL -W 64 -H 64 --steps 2 --cfg 5 --precision f32 -t 2 -q"

# 1. one image with metadata
if $SDXL generate $COMMON -p "a red fox, (snow:1.2)" -n "blurry" -s 7 -o "$W/a.png"; then
    [ -s "$W/a.png" ] && ok "a.png written" || bad "a.png missing"
else
    bad "generate exited $?"
fi

# 2. the parameters chunk parses back to the request
$SDXL meta --json "$W/a.png" > "$W/meta.json" || bad "sdxl meta failed"
for want in '"prompt":"a red fox, (snow:1.2)"' '"negative_prompt":"blurry"' '"steps":2' '"sampler":"Euler"' \
            '"cfg_scale":5' '"seed":7' '"width":64' '"height":64'; do
    grep -F "\"generation\":{" "$W/meta.json" | sed 's/"request":.*//' | grep -qF "$want" \
        && ok "parameters has $want" || bad "parameters lack $want"
done

# 3. --from reproduces the image (same request, same pixels, same metadata: identical files)
$SDXL generate -m "$MODEL" --precision f32 -t 2 -q --from "$W/a.png" -o "$W/from.png" || bad "--from exited non-zero"
cmp -s "$W/a.png" "$W/from.png" && ok "--from reproduces a.png byte for byte" || bad "--from differs from a.png"

# 4. a batch of 4 (one UNet batch of 8 with CFG) equals four single runs with seeds 100..103
$SDXL generate $COMMON -p "a lighthouse" -s 100 -b 4 --json -o "$W/batch.png" > "$W/batch.json" || bad "batch exited non-zero"
grep -q '"sub_batch":4' "$W/batch.json" && ok "planner chose one sub-batch of 4" || echo "note: planner split the batch: $(cat "$W/batch.json")"
i=0
while [ $i -lt 4 ]; do
    seed=$((100 + i))
    $SDXL generate $COMMON -p "a lighthouse" -s $seed -o "$W/single_$((i + 1)).png" || bad "single $seed exited non-zero"
    cmp -s "$W/batch_$((i + 1)).png" "$W/single_$((i + 1)).png" && ok "batch image $((i + 1)) == single seed $seed" \
        || bad "batch image $((i + 1)) != single seed $seed"
    i=$((i + 1))
done
# 5. img2img with an init image of another size (96x64) resizes it to the request (64x64)
$SDXL generate -m "$MODEL" -W 96 -H 64 --steps 2 --cfg 5 --precision f32 -t 2 -q -p "a field" -s 5 -o "$W/init96.png" \
    || bad "96x64 init image exited non-zero"
if $SDXL generate $COMMON -p "a field" -s 6 -i "$W/init96.png" -o "$W/resized.png"; then
    size=$(od -An -tu1 -j16 -N8 "$W/resized.png" | tr -s ' ' | sed 's/^ //')
    [ "$size" = "0 0 0 64 0 0 0 64" ] && ok "96x64 init image with -W 64 -H 64 gives a 64x64 PNG" \
        || bad "resized img2img PNG header size is [$size], want 64x64"
else
    bad "img2img with a 96x64 init image and -W 64 -H 64 exited $?"
fi
exit $fail
