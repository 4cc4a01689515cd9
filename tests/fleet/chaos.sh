# Fleet chaos: while 30 jobs (arriving one every 0.8 s) run on 3 workers, kill -9 a random worker that runs a job, at a random
# moment of it, 10 times, restarting each at once under a new id (a kill waits until two workers
# are up). Every job finishes exactly once (one done event, no
# failure, nothing pending), its image equals the single-worker run, and each job held by a killed
# worker is claimed by another within the visibility timeout of the kill.
# usage: chaos.sh SDXL MODELS_DIR WORK REF_DIR
. "$(dirname "$0")/lib.sh"
SDXL=$1; MD=$2; W=$3; REF=$4
[ -d "$REF" ] || fail "no reference images in $REF (fleet_jobs makes them)"
rm -rf "$W"; mkdir -p "$W"
fleet_redis "$W"
N=30; V=3000; KILLS=10
# under ASan + UBSan (SDXL_FLEET_SANITIZED=1) jobs run several times slower: fewer of them, fewer kills
[ "${SDXL_FLEET_SANITIZED:-0}" = 1 ] && { N=12; KILLS=4; }
declare -A pid
cleanup() { for p in "${pid[@]}"; do { kill -9 "$p"; wait "$p"; } 2> /dev/null; done; stop_redis; }
trap cleanup EXIT
start() { # start SLOT ID
  "$SDXL" worker --redis "$URL" --fleet-prefix "$PREFIX" --models-dir "$MD" -m tiny_sd_xl_base --output-root "$W/out" -t 1 --worker-id "$2" \
    --visibility-ms $V --max-deliveries 50 --heartbeat-ms 50 --idle-exit-ms 4000 2> "$W/$2.log" &
  pid[$1]=$!
}
for s in 1 2 3; do start $s "s$s-0"; done
# jobs arrive one every 0.8 s, so that they are still running when the later kills land
requests $N > "$W/requests.txt"
seq 1 $N | sed 's/^/j/' > "$W/ids.txt"
( for k in $(seq 1 $N); do
    sed -n "${k}p" "$W/requests.txt" | "$SDXL" fleet submit --redis "$URL" --prefix "$PREFIX" --id "j$k" > /dev/null || exit 1
    sleep 0.8
  done ) &
feeder=$!
: > "$W/kills.txt"
# each kill: a random worker among those running a job, at a random moment of that job
running() { # ids of workers whose heartbeat says running
  "$SDXL" fleet status --redis "$URL" --prefix "$PREFIX" --json | grep -o '"id":"[^"]*","host":"[^"]*","pid":[0-9]*,"model":"[^"]*","streams":\[[^]]*\],"state":"running"' |
    sed 's/"id":"\([^"]*\)".*/\1/'
}
k=0
while [ $k -lt $KILLS ]; do
  mapfile -t cand < <(running)
  if [ ${#cand[@]} = 0 ]; then
    [ "$("$SDXL" fleet status --redis "$URL" --prefix "$PREFIX" --json | grep -o '"done":[0-9]*' | head -1)" = "\"done\":$N" ] && break
    sleep 0.02; continue
  fi
  id=${cand[$(( $(rand) % ${#cand[@]} ))]}
  s=${id%%-*}; s=${s#s}
  [ "$(ps -o args= -p "${pid[$s]}" | sed 's/.*--worker-id \([^ ]*\).*/\1/')" = "$id" ] || continue
  sleep "0.$(printf %03d $(( $(rand) % 200 )))"
  k=$(( k + 1 ))
  t=$(now_ms)
  { kill -9 "${pid[$s]}"; wait "${pid[$s]}"; } 2> /dev/null
  echo "$id $t" >> "$W/kills.txt"
  start $s "s$s-$k"
  # workers join once their model is loaded (their heartbeat appears): kill again only while at
  # least two are up, so that someone is there to claim (or until every job is done)
  for _ in $(seq 2400); do
    st=$("$SDXL" fleet status --redis "$URL" --prefix "$PREFIX" --json)
    [ "$(echo "$st" | grep -o '"id":"s[0-9]*-[0-9]*"' | wc -l)" -ge 2 ] && break
    echo "$st" | grep -q "\"stats\":{\"done\":$N," && break
    sleep 0.05
  done
done
[ $k = $KILLS ] || fail "only $k kills landed before the jobs ran out"
wait $feeder || fail "submit"
"$SDXL" fleet wait --redis "$URL" --prefix "$PREFIX" --timeout 180 - < "$W/ids.txt" > "$W/results.jsonl" || fail "not every job finished"
for s in 1 2 3; do wait "${pid[$s]}" 2> /dev/null; done
pid=()
events_check $N
images_equal $N "$W/out" "$REF"
"$SDXL" fleet status --redis "$URL" --prefix "$PREFIX" --json > "$W/status.json"
grep -q '"length":0,"pending":0' "$W/status.json" || fail "queue not empty: $(cat "$W/status.json")"
# kill-to-claim: each claim of a job from a killed worker, measured from that worker's kill
hit=0; worst=0; sum=0; rworst=0; rsum=0
while read -r id t; do
  while read -r at job by; do
    d=$(( at - t ))
    hit=$(( hit + 1 )); sum=$(( sum + d ))
    [ $d -gt $worst ] && worst=$d
    [ $d -le $V ] || fail "job $job of $id claimed $d ms after the kill (visibility timeout $V ms)"
    # when the claimer started running it (it may have been busy with another job)
    s=$(awk -v j="$job" -v w="$by" -v a="$at" '$2 == "started" && $3 == j && $4 == w && $1 >= a {print $1; exit}' "$W/events.txt")
    if [ -n "$s" ]; then r=$(( s - t )); rsum=$(( rsum + r )); [ $r -gt $rworst ] && rworst=$r; fi
  done < <(awk -v w="$id" '$2 == "claimed" && $5 == w {print $1, $3, $4}' "$W/events.txt")
done < "$W/kills.txt"
runs=$(awk '$2 == "started" || $2 == "claimed"' "$W/events.txt" | wc -l)
dup=$(grep -o '"duplicate_finishes":[0-9]*' "$W/status.json")
echo "chaos: $KILLS kills, $hit of them interrupted a job; kill-to-claim mean $(( hit ? sum / hit : 0 )) ms, worst $worst ms (visibility timeout $V ms); kill-to-rerun mean $(( hit ? rsum / hit : 0 )) ms, worst $rworst ms"
echo "chaos: $N jobs, $runs runs, each job done exactly once, images equal the single-worker run; $dup"
echo "fleet chaos: ok"
