#!/bin/sh
# The README's curl examples against `sdxl serve` on a loopback port: A1111 txt2img to a PNG file,
# an async job followed through its event stream, its image, a cancel.
# usage: curl.sh SDXL MODEL WORK_DIR
set -u
SDXL=$1
MODEL=$2
W=$3
rm -rf "$W" && mkdir -p "$W" || exit 1
fail=0
ok() { echo "ok: $1"; }
bad() { echo "FAIL: $1"; fail=1; }
"$SDXL" serve -m "$MODEL" --listen 127.0.0.1:0 --port-file "$W/port" -o "$W/out" -t 1 2> "$W/server.log" &
pid=$!
i=0
while [ ! -s "$W/port" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
S=http://127.0.0.1:$(cat "$W/port")

curl -s $S/sdapi/v1/txt2img -H 'Content-Type: application/json' \
  -d '{"prompt":"a red fox in the snow","steps":4,"width":64,"height":64,"seed":42,"sampler_name":"DPM++ 2M","scheduler":"Karras"}' \
  | python3 -c 'import sys,json,base64; open(sys.argv[1],"wb").write(base64.b64decode(json.load(sys.stdin)["images"][0]))' "$W/fox.png" \
  && [ "$(od -An -c -N4 "$W/fox.png" | tr -d ' ')" = "211PNG" ] && ok "curl txt2img -> fox.png" || bad "curl txt2img"
"$SDXL" meta "$W/fox.png" | grep -q "Seed: 42" && ok "fox.png carries Seed: 42" || bad "fox.png metadata"

id=$(curl -s $S/v1/jobs -d '{"prompt":"a lighthouse","width":64,"height":64,"steps":5}' | python3 -c 'import sys,json; print(json.load(sys.stdin)["id"])')
[ -n "$id" ] && ok "curl POST /v1/jobs -> $id" || bad "curl POST /v1/jobs"
curl -s -N --max-time 120 $S/v1/jobs/$id/events > "$W/events.txt"
[ "$(grep -c '^event: progress' "$W/events.txt")" -ge 5 ] && tail -n 3 "$W/events.txt" | grep -q '^event: result' \
  && ok "curl -N events: progress then result" || bad "curl events: $(cat "$W/events.txt" | head -c 400)"
curl -s -o "$W/lighthouse.png" -w '%{http_code} %{content_type}' $S/v1/jobs/$id/images/0 > "$W/img.txt"
[ "$(cat "$W/img.txt")" = "200 image/png" ] && ok "curl images/0 -> image/png" || bad "curl images/0: $(cat "$W/img.txt")"
code=$(curl -s -o /dev/null -w '%{http_code}' -X DELETE $S/v1/jobs/$id)
[ "$code" = 202 ] && ok "curl -X DELETE -> 202" || bad "curl DELETE -> $code"
code=$(curl -s -o /dev/null -w '%{http_code}' $S/v1/jobs/nope)
[ "$code" = 404 ] && ok "curl unknown job -> 404" || bad "curl unknown job -> $code"
kill -TERM $pid
wait $pid
rc=$?
[ $rc = 0 ] && ok "SIGTERM -> exit 0" || bad "SIGTERM -> exit $rc"
exit $fail
