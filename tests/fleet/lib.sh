# Shared helpers of the fleet tests (bash). A test sources this, then calls fleet_redis.
# Redis: $SDXL_REDIS_URL when set (.ci/run starts one), else a private redis-server on a free
# loopback port in the test's work dir; without redis-server the test is skipped (exit 77).

set -u
# Several single-threaded workers share 2 cores: no OpenMP pool, no spinning waits.
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
fail() { echo "FAIL: $*" >&2; exit 1; }
now_ms() { date +%s%3N; }
rand() { od -An -N2 -tu2 /dev/urandom | tr -d ' '; } # 0..65535

# start_redis DIR [extra redis-server args]: sets REDIS_PORT, REDIS_PIDFILE, REDIS_ARGS.
start_redis() {
  local dir=$1; shift
  command -v redis-server > /dev/null || { echo "SKIP: redis-server not installed (Debian package redis-server; scripts/setup installs it)"; exit 77; }
  mkdir -p "$dir"
  for _ in 1 2 3 4 5 6 7 8; do
    REDIS_PORT=$(( 20000 + $(rand) % 20000 ))
    REDIS_PIDFILE=$dir/redis.pid
    REDIS_ARGS=(--port "$REDIS_PORT" --bind 127.0.0.1 --dir "$dir" --pidfile "$REDIS_PIDFILE"
                --logfile "$dir/redis.log" --daemonize yes --maxmemory-policy noeviction "$@")
    rm -f "$REDIS_PIDFILE"
    redis-server "${REDIS_ARGS[@]}" > /dev/null 2>&1 || continue
    for _ in $(seq 50); do
      redis-cli -p "$REDIS_PORT" ping 2> /dev/null | grep -q PONG && return 0
      sleep 0.1
    done
    stop_redis
  done
  fail "could not start redis-server (see $dir/redis.log)"
}

stop_redis() {
  [ -f "${REDIS_PIDFILE:-}" ] || return 0
  local pid; pid=$(cat "$REDIS_PIDFILE")
  redis-cli -p "$REDIS_PORT" shutdown > /dev/null 2>&1 || kill "$pid" 2> /dev/null
  for _ in $(seq 50); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
  rm -f "$REDIS_PIDFILE"
}

# fleet_redis DIR: sets URL and PREFIX (unique per run, so tests may share a server).
fleet_redis() {
  PREFIX=t$$
  if [ -n "${SDXL_REDIS_URL:-}" ]; then
    URL=$SDXL_REDIS_URL
  else
    start_redis "$1/redis" --save '' --appendonly no
    URL=redis://127.0.0.1:$REDIS_PORT
  fi
}

# requests N: N tiny-model requests, job k has seed k.
requests() {
  for k in $(seq 1 "$1"); do
    echo "{\"prompt\":\"a lighthouse at dusk, number $k\",\"negative_prompt\":\"blurry\",\"width\":128,\"height\":128,\"steps\":8,\"cfg_scale\":5,\"sampler\":\"Euler a\",\"seed\":$k}"
  done
}

# events_check N: every job j1..jN has exactly one done event and no failed/dead event.
events_check() {
  "$SDXL" fleet events --redis "$URL" --prefix "$PREFIX" > "$W/events.txt" || fail "fleet events"
  for k in $(seq 1 "$1"); do
    local d; d=$(awk -v id="j$k" '$2 == "done" && $3 == id' "$W/events.txt" | wc -l)
    [ "$d" = 1 ] || fail "job j$k finished $d times (expected exactly once)"
  done
  ! awk '$2 == "failed" || $2 == "dead"' "$W/events.txt" | grep -q . || fail "failed jobs: $(awk '$2 == "failed" || $2 == "dead"' "$W/events.txt")"
}

# images_equal N OUT REF: job k's image equals the reference byte for byte.
images_equal() {
  for k in $(seq 1 "$1"); do
    cmp -s "$2/j$k/0.png" "$3/j$k/0.png" || fail "j$k/0.png differs from the single-worker run"
  done
}
