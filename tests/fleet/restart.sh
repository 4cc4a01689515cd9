# Fleet and a Redis restart: 3 workers run 30 jobs on a private redis-server with persistence on
# (AOF, fsync always). The server is stopped cleanly once (SHUTDOWN) and killed once (kill -9)
# mid-run, each time started again on the same data; the workers reconnect with backoff, finish
# the jobs they were running, and every job ends done exactly once with the single-worker image.
# usage: restart.sh SDXL MODELS_DIR WORK REF_DIR
. "$(dirname "$0")/lib.sh"
SDXL=$1; MD=$2; W=$3; REF=$4
[ -d "$REF" ] || fail "no reference images in $REF (fleet_jobs makes them)"
rm -rf "$W"; mkdir -p "$W"
start_redis "$W/redis" --appendonly yes --appendfsync always --save ''
URL=redis://127.0.0.1:$REDIS_PORT; PREFIX=r$$
N=30; V=4000; FIRST=8; SECOND=18
# under ASan + UBSan (SDXL_FLEET_SANITIZED=1) jobs run several times slower: fewer of them
[ "${SDXL_FLEET_SANITIZED:-0}" = 1 ] && { N=12; FIRST=3; SECOND=7; }
pids=()
cleanup() { for p in "${pids[@]}"; do { kill -9 "$p"; wait "$p"; } 2> /dev/null; done; stop_redis; }
trap cleanup EXIT
done_count() {
  "$SDXL" fleet status --redis "$URL" --prefix "$PREFIX" --retry-ms 30000 --json | grep -o '"stats":{"done":[0-9]*' | grep -o '[0-9]*$'
}
wait_done() { # wait_done K: until at least K jobs are done
  for _ in $(seq 600); do [ "$(done_count)" -ge "$1" ] && return 0; sleep 0.05; done
  fail "fewer than $1 jobs done in time"
}
requests $N | "$SDXL" fleet submit --redis "$URL" --prefix "$PREFIX" --id-prefix j > "$W/ids.txt" || fail "submit"
for w in w1 w2 w3; do
  "$SDXL" worker --redis "$URL" --fleet-prefix "$PREFIX" --models-dir "$MD" -m tiny_sd_xl_base --output-root "$W/out" -t 1 --worker-id $w --visibility-ms $V \
    --idle-exit-ms 6000 2> "$W/$w.log" &
  pids+=($!)
done
wait_done $FIRST
before=$(done_count); t=$(now_ms)
redis-cli -p "$REDIS_PORT" shutdown > /dev/null 2>&1
sleep 1.5
redis-server "${REDIS_ARGS[@]}" || fail "restart redis-server"
echo "restart 1: SHUTDOWN with $before jobs done; server back after $(( $(now_ms) - t )) ms"
wait_done $SECOND
pid=$(cat "$REDIS_PIDFILE")
before=$(done_count); t=$(now_ms)
kill -9 "$pid"
sleep 1
redis-server "${REDIS_ARGS[@]}" || fail "restart redis-server"
echo "restart 2: kill -9 with $before jobs done; server back after $(( $(now_ms) - t )) ms"
"$SDXL" fleet wait --redis "$URL" --prefix "$PREFIX" --timeout 180 - < "$W/ids.txt" > "$W/results.jsonl" || fail "not every job finished"
for p in "${pids[@]}"; do wait "$p" || fail "a worker exited with an error: $(tail -2 "$W"/w*.log)"; done
pids=()
events_check $N
images_equal $N "$W/out" "$REF"
"$SDXL" fleet status --redis "$URL" --prefix "$PREFIX" --json > "$W/status.json"
grep -q '"length":0,"pending":0' "$W/status.json" || fail "queue not empty: $(cat "$W/status.json")"
rec=$(cat "$W"/w*.log | grep -c "reconnected")
[ "$rec" -ge 3 ] || fail "workers did not report reconnecting ($rec)"
echo "restart: $N jobs each done exactly once across 2 server restarts; $rec worker reconnects; $(grep -o '"duplicate_finishes":[0-9]*' "$W/status.json")"
echo "fleet restart: ok"
