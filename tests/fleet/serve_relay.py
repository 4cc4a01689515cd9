"""`sdxl serve --redis` as the fleet's front end: 2 `sdxl worker --redis` on the tiny model, jobs
submitted over HTTP, each job's event stream read to its end (accepted, progress steps in order,
result) exactly as a local server writes it, the images fetched over HTTP equal to a local server's
byte for byte; A1111's txt2img through the fleet; back-pressure (429 busy, /ready 503) and cancel
of a queued and of a running job.
Redis: $SDXL_REDIS_URL, else a private redis-server on a free loopback port; skipped (77) without one.
usage: serve_relay.py SDXL MODELS_DIR WORK"""
import base64
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "serve"))
import requests  # noqa: E402

from srvtest import Checks, Server, png_info, sse_events  # noqa: E402

SDXL, MD, W = sys.argv[1], sys.argv[2], sys.argv[3]
MODEL = os.path.join(MD, "tiny_sd_xl_base.safetensors")
shutil.rmtree(W, ignore_errors=True)
os.makedirs(W)
os.environ.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")
procs, servers = [], []
redis_proc = None


def start_redis():
    """A private redis-server on a free loopback port (when $SDXL_REDIS_URL is not set)."""
    global redis_proc
    if not shutil.which("redis-server"):
        print("SKIP: redis-server not installed (Debian package redis-server; scripts/setup installs it)")
        sys.exit(77)
    d = os.path.join(W, "redis")
    os.makedirs(d)
    for _ in range(8):
        port = random.randint(20000, 39999)
        redis_proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", d,
                                       "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction"],
                                      stdout=open(os.path.join(d, "redis.log"), "ab"), stderr=subprocess.STDOUT)
        for _ in range(50):
            time.sleep(0.1)
            if redis_proc.poll() is not None:
                break
            if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG":
                return "redis://127.0.0.1:%d" % port
        redis_proc.kill()
        redis_proc.wait()
    print("FAIL: could not start redis-server")
    sys.exit(1)


def cleanup():
    for s in servers:
        if s.alive():
            s.stop()
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    if redis_proc:
        redis_proc.kill()
        redis_proc.wait()


URL = os.environ.get("SDXL_REDIS_URL") or start_redis()
PREFIX = "tr%d" % os.getpid()
OUT = os.path.join(W, "fleet_out")  # the workers' shared output root = the front end's -o
c = Checks("fleet_serve")


def worker(name, prefix):
    log = open(os.path.join(W, name + ".log"), "ab")
    p = subprocess.Popen([SDXL, "worker", "--redis", URL, "--fleet-prefix", prefix, "--models-dir", MD, "-m",
                          "tiny_sd_xl_base", "--output-root", OUT, "-t", "1", "--worker-id", name,
                          "--visibility-ms", "10000"], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    procs.append(p)
    return p


def read_events(url, jid, timeout=300, headers=None):
    out = []
    with requests.get(url + "/v1/jobs/%s/events" % jid, stream=True, timeout=timeout, headers=headers or {}) as s:
        if s.status_code != 200:
            return None
        for eid, kind, data in sse_events(s):
            out.append((int(eid), kind, json.loads(data)))
    return out


def req(k, steps=8):
    return {"prompt": "a lighthouse at dusk, number %d" % k, "negative_prompt": "blurry", "width": 128,
            "height": 128, "steps": steps, "cfg_scale": 5, "sampler": "Euler a", "seed": 100 + k}


try:
    N = 4
    # the local single run: the same requests on a local `sdxl serve`
    local = Server(SDXL, MODEL, W, ["--journal", "none"], name="local").start()
    servers.append(local)
    ref = []
    for k in range(N):
        jid = requests.post(local.url + "/v1/jobs", json=req(k), timeout=30).json()["id"]
        ev = read_events(local.url, jid)
        ref.append((ev, requests.get(local.url + "/v1/jobs/%s/images/0" % jid, timeout=30).content))
    local.stop()
    c.ok(all(len(png) > 100 for _, png in ref), "local reference run: %d images" % N)

    # the fleet: 2 workers and the front end
    for name in ("w1", "w2"):
        worker(name, PREFIX)
    fr = Server(SDXL, MODEL, W, ["--redis", URL, "--fleet-prefix", PREFIX, "--queue-limit", "16"], name="fleet").start()
    servers.append(fr)
    U = fr.url
    r = requests.get(U + "/ready", timeout=10)
    c.ok(r.status_code == 200 and r.json().get("fleet") == PREFIX + ":jobs", "/ready names the fleet stream: %s" % r.text)
    ids = []
    for k in range(N):
        r = requests.post(U + "/v1/jobs", json=req(k), timeout=30)
        c.ok(r.status_code == 202 and r.headers.get("Location") == "/v1/jobs/" + r.json().get("id", "?"),
             "POST /v1/jobs %d -> 202 with Location (%d %s)" % (k, r.status_code, r.text[:200]))
        ids.append(r.json().get("id"))
    results = [None] * N
    ths = [threading.Thread(target=lambda i=i: results.__setitem__(i, read_events(U, ids[i]))) for i in range(N)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    for k in range(N):
        ev = results[k] or []
        kinds = [e[1] for e in ev]
        steps = [d["step"] for _, kd, d in ev if kd == "progress" and d.get("phase") == "base"]
        c.ok(kinds[:1] == ["accepted"] and kinds[-1:] == ["result"], "job %d: stream starts with accepted and ends with result (%s)"
             % (k, kinds[:1] + kinds[-1:]))
        c.ok([e[0] for e in ev] == sorted(set(e[0] for e in ev)), "job %d: event ids increase" % k)
        c.ok(steps == sorted(steps) and steps[-1:] == [8], "job %d: base progress steps in order, ending at 8: %s" % (k, steps))
        c.ok(steps == list(range(1, 9)), "job %d: one progress event per step, as a local stream" % k)
        lkinds = [e[1] for e in ref[k][0]]
        c.ok(sorted(set(kinds)) == sorted(set(lkinds)), "job %d: the same event kinds as the local stream (%s vs %s)"
             % (k, sorted(set(kinds)), sorted(set(lkinds))))
        fin = ev[-1][2] if ev else {}
        lfin = ref[k][0][-1][2]
        c.ok(fin.get("images") == ["/v1/jobs/%s/images/0" % ids[k]] and sorted(fin.get("job", {}).keys()) ==
             sorted(lfin.get("job", {}).keys()), "job %d: result has the local result's fields" % k)
        c.ok(fin.get("job", {}).get("seeds") == [100 + k] and fin.get("job", {}).get("state") == "done",
             "job %d: result state done, seed %d" % (k, 100 + k))
        png = requests.get(U + "/v1/jobs/%s/images/0" % ids[k], timeout=30)
        c.ok(png.status_code == 200 and png.headers.get("Content-Type") == "image/png", "job %d: image served" % k)
        c.ok(png.content == ref[k][1], "job %d: fleet image equals the local single run byte for byte" % k)
    g = requests.get(U + "/v1/jobs/" + ids[0], timeout=10).json()
    c.ok(g.get("job", {}).get("state") == "done" and g.get("images") == ["/v1/jobs/%s/images/0" % ids[0]],
         "GET /v1/jobs/{id} reads the record")
    lst = requests.get(U + "/v1/jobs?limit=3", timeout=10).json()
    c.ok([j["id"] for j in lst.get("jobs", [])] == ids[::-1][:3], "GET /v1/jobs lists the newest first")
    ev = read_events(U, ids[0], headers={"Last-Event-ID": str(results[0][2][0])})
    c.ok([e[0] for e in ev or []] == [e[0] for e in results[0][3:]], "Last-Event-ID resumes a fleet job's stream")
    c.ok(requests.get(U + "/v1/jobs/nosuchjob", timeout=10).status_code == 404, "unknown job -> 404")
    r = requests.post(U + "/v1/jobs", json={"prompt": "x", "width": 100, "height": 64}, timeout=10)
    c.ok(r.status_code == 422 and r.json()["error"]["issues"][0]["field"] == "width",
         "invalid request -> 422 naming the field, before the queue")
    workers = subprocess.run([SDXL, "fleet", "status", "--redis", URL, "--prefix", PREFIX, "--json"],
                             capture_output=True, text=True).stdout
    st = json.loads(workers) if workers.strip() else {}
    c.ok(st.get("stats", {}).get("done") == N, "the fleet ran the %d jobs once each: %s" % (N, st.get("stats")))

    # A1111's blocking txt2img through the fleet
    r = requests.post(U + "/sdapi/v1/txt2img", json={"prompt": "a fox", "steps": 4, "width": 64, "height": 64,
                                                      "seed": 5}, timeout=300)
    imgs = r.json().get("images", []) if r.status_code == 200 else []
    c.ok(len(imgs) == 1 and png_info(base64.b64decode(imgs[0]))[:2] == (64, 64),
         "A1111 txt2img through the fleet -> 1 image (%d %s)" % (r.status_code, r.text[:200]))

    # cancel of a running job: its worker stops it within a step
    r = requests.post(U + "/v1/jobs", json=dict(req(9, steps=150), width=256, height=256), timeout=30)
    jl = r.json()["id"]
    got = []

    def follow():
        with requests.get(U + "/v1/jobs/%s/events" % jl, stream=True, timeout=300) as s:
            for eid, kind, data in sse_events(s):
                got.append((int(eid), kind, json.loads(data)))
    th = threading.Thread(target=follow)
    th.start()
    t0 = time.time()
    while time.time() - t0 < 120 and not any(k == "progress" and d.get("phase") == "base" and d["step"] >= 2 for _, k, d in got):
        time.sleep(0.05)
    t_cancel = time.time()
    r = requests.delete(U + "/v1/jobs/" + jl, timeout=10)
    th.join(120)
    c.ok(r.status_code == 202, "DELETE of a running fleet job -> 202")
    last = got[-1] if got else (0, "", {})
    c.ok(last[1] == "error" and last[2].get("code") == "cancelled",
         "running job's stream ends with error cancelled (%s %s)" % (last[1], last[2].get("code")))
    c.ok(time.time() - t_cancel < 30, "cancelled in %.1f s" % (time.time() - t_cancel))
    c.ok(requests.get(U + "/v1/jobs/" + jl, timeout=10).json()["job"]["state"] == "cancelled", "its record says cancelled")
    fr.stop()

    # back-pressure and cancel of a queued job: a front end on a stream no worker reads
    bp = Server(SDXL, MODEL, W, ["--redis", URL, "--fleet-prefix", PREFIX + "b", "--queue-limit", "2"], name="fleet").start()
    servers.append(bp)
    q = [requests.post(bp.url + "/v1/jobs", json=req(k), timeout=30) for k in range(3)]
    c.ok([x.status_code for x in q] == [202, 202, 429], "queue limit 2: 202, 202, 429 (%s)" % [x.status_code for x in q])
    c.ok(q[2].json()["error"]["code"] == "busy" and "limit 2" in q[2].json()["error"]["message"] and
         q[2].headers.get("Retry-After"), "429 says busy, the stream and its limit: %s" % q[2].text)
    c.ok(requests.get(bp.url + "/ready", timeout=10).status_code == 503, "/ready -> 503 while the stream is full")
    qid = q[0].json()["id"]
    r = requests.delete(bp.url + "/v1/jobs/" + qid, timeout=10)
    c.ok(r.status_code == 202 and r.json()["job"]["state"] == "cancelled", "DELETE of a queued fleet job -> cancelled at once")
    ev = read_events(bp.url, qid, timeout=30) or []
    c.ok(ev and ev[-1][1] == "error" and ev[-1][2].get("code") == "cancelled", "its stream ends with error cancelled")
    c.ok(requests.post(bp.url + "/v1/jobs", json=req(5), timeout=30).status_code == 202,
         "the cancelled job left the stream: a new one fits")
    c.ok(bp.stop() == 0, "SIGTERM: the front end exits 0")
finally:
    cleanup()
    for name in ("w1", "w2"):
        p = os.path.join(W, name + ".log")
        if c.failed and os.path.exists(p):
            print("--- %s:\n%s" % (name, open(p).read()[-1500:]))
c.done()
