#!/bin/sh
# sdxl-st-recipe: `make` in a copy of the models folder rewrites the committed recipe byte for byte,
# `assemble` rebuilds the single file, and a changed source byte or size fails with no output.
# usage: st_recipe.sh TOOL MODELS_DIR WORK_DIR
set -u
T=$1
M=$2
W=$3
rm -rf "$W" && mkdir -p "$W" || exit 1
fail=0
ok() { echo "ok: $1"; }
bad() { echo "FAIL: $1"; fail=1; }

SRC="tiny-sdxl-base/unet/diffusion_pytorch_model.safetensors tiny-sdxl-base/vae/diffusion_pytorch_model.safetensors
     tiny-sdxl-base/text_encoder/model.safetensors tiny-sdxl-base/text_encoder_2/model.safetensors"
for s in $SRC; do mkdir -p "$W/$(dirname "$s")" && cp -L "$M/$s" "$W/$s" || exit 1; done
cp "$M/tiny_sd_xl_base.safetensors" "$W/" || exit 1

"$T" make "$W/tiny_sd_xl_base.safetensors" "$W/base.st-recipe" $SRC \
  && cmp -s "$W/base.st-recipe" "$M/tiny_sd_xl_base.st-recipe" \
  && ok "make rewrites the committed recipe" || bad "make differs from the committed recipe"
"$T" assemble "$M/tiny_sd_xl_base.st-recipe" "$W/out.safetensors" \
  && cmp -s "$W/out.safetensors" "$M/tiny_sd_xl_base.safetensors" && ok "assemble" || bad "assemble"

cp "$M/tiny_sd_xl_base.st-recipe" "$W/tiny_sd_xl_base.st-recipe"
V=$W/tiny-sdxl-base/vae/diffusion_pytorch_model.safetensors
printf 'x' | dd of="$V" bs=1 seek=100000 conv=notrunc 2> /dev/null
"$T" assemble "$W/tiny_sd_xl_base.st-recipe" "$W/changed.safetensors" 2> "$W/err.txt"
[ $? -eq 1 ] && [ ! -e "$W/changed.safetensors" ] && grep -q "sha256 of the result" "$W/err.txt" \
  && ok "changed byte: $(cat "$W/err.txt")" || bad "changed byte"
printf 'x' >> "$V"
"$T" assemble "$W/tiny_sd_xl_base.st-recipe" "$W/changed.safetensors" 2> "$W/err.txt"
[ $? -eq 1 ] && [ ! -e "$W/changed.safetensors" ] && grep -q "bytes, the recipe was made from" "$W/err.txt" \
  && ok "changed size: $(cat "$W/err.txt")" || bad "changed size"
head -c 200000 "$M/tiny_sd_xl_base.st-recipe" > "$W/cut.st-recipe"
"$T" assemble "$W/cut.st-recipe" "$W/cut.safetensors" 2> "$W/err.txt"
[ $? -eq 1 ] && [ ! -e "$W/cut.safetensors" ] && ok "cut recipe: $(cat "$W/err.txt")" || bad "cut recipe"
"$T" > /dev/null 2>&1
[ $? -eq 2 ] && ok "usage" || bad "usage"
exit $fail
