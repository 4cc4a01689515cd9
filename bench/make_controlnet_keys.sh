#!/bin/sh
# Key table of a full-size SDXL ControlNet in sgm naming (control_model.*), derived from the base
# key table: the UNet's time/add embeddings, input and middle blocks, plus the hint block
# (16, 32, 96, 256 -> 320 channels), nine zero convs and middle_block_out. Feed it to
# bench-make_checkpoint --keys to make a random ControlNet for bench-unet --control:
#   sh bench/make_controlnet_keys.sh > /tmp/cn_keys.tsv
#   bench-make_checkpoint --keys /tmp/cn_keys.tsv -o bench/models/sdxl_controlnet_random.safetensors
set -eu
K=$(dirname "$0")/../tests/data/golden/keys/sdxl_base_keys.tsv
head -1 "$K"
grep -E '^model\.diffusion_model\.(time_embed|label_emb|input_blocks|middle_block)\.' "$K" |
    sed 's/^model\.diffusion_model\./control_model./'
awk 'BEGIN {
    n = split("16,3 16,16 32,16 32,32 96,32 96,96 256,96 320,256", L, " ")
    for (i = 1; i <= n; i++) {
        split(L[i], a, ",")
        printf "control_model.input_hint_block.%d.weight\tF16\t[%s,%s,3,3]\n", 2 * (i - 1), a[1], a[2]
        printf "control_model.input_hint_block.%d.bias\tF16\t[%s]\n", 2 * (i - 1), a[1]
    }
    m = split("320 320 320 320 640 640 640 1280 1280", C, " ")
    for (i = 1; i <= m; i++) {
        printf "control_model.zero_convs.%d.0.weight\tF16\t[%s,%s,1,1]\n", i - 1, C[i], C[i]
        printf "control_model.zero_convs.%d.0.bias\tF16\t[%s]\n", i - 1, C[i]
    }
    printf "control_model.middle_block_out.0.weight\tF16\t[1280,1280,1,1]\n"
    printf "control_model.middle_block_out.0.bias\tF16\t[1280]\n"
}'
