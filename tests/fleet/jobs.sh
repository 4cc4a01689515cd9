# Fleet: 3 workers on the tiny model take 30 jobs from one stream; every job completes exactly once
# and its image equals a single-worker run byte for byte (kept in WORK/ref for the other fleet
# tests). Also: back-pressure ("busy" past --max-queue), an invalid request fails cleanly, and a
# job whose worker dies on every delivery ends in the dead-letter stream as worker_crashed.
# usage: jobs.sh SDXL MODELS_DIR WORK
. "$(dirname "$0")/lib.sh"
SDXL=$1; MD=$2; W=$3
rm -rf "$W"; mkdir -p "$W"
fleet_redis "$W"
pids=()
cleanup() { for p in "${pids[@]}"; do { kill -9 "$p"; wait "$p"; } 2> /dev/null; done; stop_redis; }
trap cleanup EXIT
N=30
work() { # work ID PREFIX OUT [options]: one worker in the background, log in $W/ID.log
  local id=$1 pre=$2 out=$3; shift 3
  "$SDXL" worker --redis "$URL" --fleet-prefix "$pre" --models-dir "$MD" -m tiny_sd_xl_base --output-root "$out" -t 1 --worker-id "$id" "$@" 2> "$W/$id.log" &
  pids+=($!)
}

# single-worker reference
requests $N | "$SDXL" fleet submit --redis "$URL" --prefix "${PREFIX}s" --id-prefix j > "$W/ids_s.txt" || fail "submit"
"$SDXL" worker --redis "$URL" --fleet-prefix "${PREFIX}s" --models-dir "$MD" -m tiny_sd_xl_base --output-root "$W/ref" -t 1 --worker-id single \
  --idle-exit-ms 1500 2> "$W/single.log" || fail "single worker: $(tail -3 "$W/single.log")"
"$SDXL" fleet wait --redis "$URL" --prefix "${PREFIX}s" --timeout 60 - < "$W/ids_s.txt" > /dev/null || fail "single-worker jobs"

# back-pressure: 30 queued and no worker yet, the 31st is refused at --max-queue 30
requests $N | "$SDXL" fleet submit --redis "$URL" --prefix "$PREFIX" --id-prefix j --max-queue $N > "$W/ids.txt" || fail "submit"
[ "$(wc -l < "$W/ids.txt")" = $N ] || fail "expected $N job ids"
set +e
echo '{"prompt":"one too many","width":64,"height":64,"steps":1}' |
  "$SDXL" fleet submit --redis "$URL" --prefix "$PREFIX" --max-queue $N > /dev/null 2> "$W/busy.txt"
rc=$?
set -e
[ $rc = 3 ] && grep -q "busy: $PREFIX:jobs holds $N jobs (limit $N)" "$W/busy.txt" || fail "back-pressure: rc=$rc $(cat "$W/busy.txt")"
echo "back-pressure: $(cat "$W/busy.txt")"
set +e

# three workers
t0=$(now_ms)
for w in w1 w2 w3; do work $w "$PREFIX" "$W/out" --visibility-ms 5000 --idle-exit-ms 2000; done
"$SDXL" fleet wait --redis "$URL" --prefix "$PREFIX" --timeout 120 - < "$W/ids.txt" > "$W/results.jsonl" || fail "3-worker jobs did not all finish"
t1=$(now_ms)
for p in "${pids[@]}"; do wait "$p" || fail "a worker exited with an error"; done
pids=()
events_check $N
images_equal $N "$W/out" "$W/ref"
for w in w1 w2 w3; do
  n=$(awk -v w=$w '$2 == "done" && $4 == w' "$W/events.txt" | wc -l)
  [ "$n" -ge 1 ] || fail "worker $w took no job"
  echo "worker $w: $n jobs"
done
"$SDXL" fleet status --redis "$URL" --prefix "$PREFIX" --json > "$W/status.json"
grep -q '"length":0,"pending":0' "$W/status.json" || fail "queue not empty: $(cat "$W/status.json")"
grep -q '"duplicate_finishes":0' "$W/status.json" || fail "duplicate finishes: $(cat "$W/status.json")"
echo "3 workers: $N jobs in $(( t1 - t0 )) ms, each done exactly once, images equal the single-worker run"

# an invalid request fails with a clear error and does not come back
echo '{"prompt":"bad size","width":100,"height":64,"steps":2}' |
  "$SDXL" fleet submit --redis "$URL" --prefix "${PREFIX}d" --id bad > /dev/null || fail "submit bad"
"$SDXL" worker --redis "$URL" --fleet-prefix "${PREFIX}d" --models-dir "$MD" -m tiny_sd_xl_base --output-root "$W/outd" -t 1 --worker-id wbad \
  --idle-exit-ms 1000 2> "$W/wbad.log" || fail "worker on a bad request"
"$SDXL" fleet result --redis "$URL" --prefix "${PREFIX}d" bad > "$W/bad.json"
grep -q '"state":"failed"' "$W/bad.json" && grep -q '"error_code":"invalid_request"' "$W/bad.json" && grep -q 'width' "$W/bad.json" \
  || fail "invalid request: $(cat "$W/bad.json")"
echo "invalid request: $(grep -o '"error":"[^"]*"' "$W/bad.json")"

# dead letter: the job's worker is killed on each of its 2 allowed deliveries; the 3rd fails it
echo '{"prompt":"a job that kills its worker","width":256,"height":256,"steps":120,"seed":7}' |
  "$SDXL" fleet submit --redis "$URL" --prefix "${PREFIX}d" --id crash > /dev/null || fail "submit crash"
for k in 1 2 3; do
  work "k$k" "${PREFIX}d" "$W/outd" --visibility-ms 1000 --max-deliveries 2 --idle-exit-ms 3000
  if [ $k -lt 3 ]; then
    for _ in $(seq 300); do
      "$SDXL" fleet result --redis "$URL" --prefix "${PREFIX}d" crash | grep -q "\"state\":\"running\".*\"worker\":\"k$k\"\|\"worker\":\"k$k\".*\"state\":\"running\"" && break
      sleep 0.05
    done
    sleep 0.3
    { kill -9 "${pids[-1]}"; wait "${pids[-1]}"; } 2> /dev/null
  fi
done
"$SDXL" fleet wait --redis "$URL" --prefix "${PREFIX}d" --timeout 30 crash > "$W/crash.json"
grep -q '"state":"failed"' "$W/crash.json" && grep -q '"error_code":"worker_crashed"' "$W/crash.json" && grep -q '"deliveries":3' "$W/crash.json" \
  || fail "dead letter: $(cat "$W/crash.json")"
"$SDXL" fleet status --redis "$URL" --prefix "${PREFIX}d" --json | grep -q '"dead":1,' || fail "dead-letter stream should hold 1 entry"
echo "dead letter: $(grep -o '"error":"[^"]*"' "$W/crash.json")"
echo "fleet jobs: ok"
