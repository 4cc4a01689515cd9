#!/bin/sh
# SIGTERM / SIGINT at several moments: `sdxl generate` cancels and exits 130 (never dies by the
# signal, never leaves a partial file); `sdxl worker` finishes the running job and exits 0.
# usage: signals.sh SDXL_BINARY MODELS_DIR WORK_DIR
set -u
SDXL=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
MODEL=$2/tiny_sd_xl_base.safetensors
W=$3
rm -rf "$W" && mkdir -p "$W" || exit 1
fail=0
ok() { echo "ok: $1"; }
bad() { echo "FAIL: $1"; fail=1; }

# waits (up to 120 s) until FILE contains PATTERN
wait_for() {
    i=0
    while [ $i -lt 1200 ]; do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}

gen() { # SIGNAL MOMENT(load|base|decode)
    out="$W/gen_$1_$2.png"
    log="$W/gen_$1_$2.log"
    "$SDXL" generate -m "$MODEL" -p "a lighthouse" -W 128 -H 128 --steps 40 --seed 3 --precision f32 -t 2 \
        -o "$out" 2> "$log" &
    pid=$!
    case $2 in
        load) sleep 0.05 ;;
        base) wait_for "$log" "base" || bad "generate never reached the base steps" ;;
        decode) wait_for "$log" "decode" || true ;;
    esac
    kill -s "$1" $pid
    wait $pid
    rc=$?
    if [ $rc -eq 130 ]; then
        ok "generate, $1 while $2: exit 130"
        [ -e "$out" ] && bad "generate, $1 while $2: cancelled but wrote $out"
    elif [ $rc -eq 0 ] && [ "$2" = decode ]; then
        ok "generate, $1 after the last step: finished (exit 0)"
    else
        bad "generate, $1 while $2: exit $rc (wanted 130)"
    fi
    ls "$W" | grep -q '\.tmp$' && bad "a temporary file was left behind"
}

for sig in TERM INT; do
    for moment in load base decode; do
        gen $sig $moment
    done
done

# the worker: the running job finishes, then exit 0
mkdir -p "$W/models"
cp "$2/tiny_sd_xl_base.safetensors" "$W/models/m.safetensors"
cp "$2/tiny_sd_xl_base.yaml" "$W/models/m.yaml"
for sig in TERM INT; do
    fifo="$W/in_$sig"
    rm -f "$fifo" && mkfifo "$fifo"
    ( cd "$W" && exec "$SDXL" worker --models-dir models -m m --precision f32 -t 2 < "$fifo" > "$W/worker_$sig.out" 2> "$W/worker_$sig.log" ) &
    pid=$!
    exec 9> "$fifo"
    echo '{"op":"submit","id":"s","prompt":"a boat","width":128,"height":128,"steps":12,"seed":1}' >&9
    wait_for "$W/worker_$sig.out" '"phase":"base"' || bad "worker never started stepping"
    kill -s $sig $pid
    wait $pid
    rc=$?
    exec 9>&-
    [ $rc -eq 0 ] && ok "worker, $sig mid-step: exit 0" || bad "worker, $sig mid-step: exit $rc"
    grep -q '"event":"result"' "$W/worker_$sig.out" && ok "worker, $sig: the running job finished" \
        || bad "worker, $sig: the running job did not finish"
done
exit $fail
