#!/bin/sh
# Each bad request gives one clear error line naming the problem, a non-zero exit, and no output file.
# usage: generate_errors.sh SDXL_BINARY MODELS_DIR WORK_DIR
set -u
SDXL=$1
MODEL=$2/tiny_sd_xl_base.safetensors
W=$3
rm -rf "$W" && mkdir -p "$W" || exit 1
fail=0
printf 'this is not an image' > "$W/corrupt.png"
# a valid 64x64 init image for the strength case
$SDXL generate -m "$MODEL" -p x -W 64 -H 64 --steps 1 --precision f32 -q -s 1 -o "$W/init.png" || { echo "FAIL: init"; exit 1; }

# expect NAME WORD ARGS...: non-zero exit, stderr is one line containing WORD, no out.png
expect() {
    name=$1; word=$2; shift 2
    rm -f "$W/out.png" "$W/err.txt"
    "$SDXL" generate "$@" -o "$W/out.png" -q 2> "$W/err.txt"
    rc=$?
    lines=$(wc -l < "$W/err.txt")
    if [ $rc -eq 0 ]; then echo "FAIL: $name: exit 0"; fail=1
    elif [ -e "$W/out.png" ]; then echo "FAIL: $name: wrote out.png"; fail=1
    elif [ "$lines" -ne 1 ]; then echo "FAIL: $name: $lines error lines:"; cat "$W/err.txt"; fail=1
    elif ! grep -q -- "$word" "$W/err.txt"; then echo "FAIL: $name: error does not mention $word:"; cat "$W/err.txt"; fail=1
    else echo "ok: $name (exit $rc): $(cat "$W/err.txt")"
    fi
}
expect "width not a multiple of 8" width -m "$MODEL" -p x -W 100 -H 64
expect "steps 0" steps -m "$MODEL" -p x -W 64 -H 64 --steps 0
expect "strength 1.5" strength -m "$MODEL" -p x -i "$W/init.png" --strength 1.5
expect "unknown sampler" sampler -m "$MODEL" -p x -W 64 -H 64 --sampler "Eulerr Z"
expect "missing model file" "$W/nope.safetensors" -m "$W/nope.safetensors" -p x -W 64 -H 64
expect "missing init image" "$W/nope.png" -m "$MODEL" -p x -i "$W/nope.png"
expect "corrupt init image" corrupt.png -m "$MODEL" -p x -i "$W/corrupt.png"
expect "unknown flag" "--bogus" -m "$MODEL" -p x --bogus 1
exit $fail
