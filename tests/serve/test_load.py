"""Load: wrk on /health and /v1/schedulers while a generation runs (no error; p99 printed), and 50
concurrent POST /v1/jobs against a queue of 20 on a paused server: exactly 20 accepted, 30 get 429
with Retry-After, every accepted job completes once the runner starts.
usage: test_load.py SDXL MODEL"""
import re
import subprocess
import sys
import threading
import time

import requests

from srvtest import Checks, Server, workdir

SDXL, MODEL = sys.argv[1], sys.argv[2]
c = Checks("serve_load")
work = workdir("serve_load")
srv = Server(SDXL, MODEL, work, ["--no-access-log"]).start()
U = srv.url

r = requests.post(U + "/v1/jobs", json={"prompt": "busy", "width": 256, "height": 256, "steps": 150, "seed": 5, "batch_size": 4}, timeout=60)
busy = r.json()["id"]
for _ in range(1200):
    if requests.get(U + "/sdapi/v1/progress").json()["state"]["sampling_step"] >= 1:
        break
    time.sleep(0.05)


def ms(v, unit):
    return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


step0 = requests.get(U + "/sdapi/v1/progress").json()["state"]["sampling_step"]
for path in ("/health", "/v1/schedulers"):
    out = subprocess.run(["wrk", "-t", "2", "-c", "16", "-d", "3s", "--latency", U + path],
                         capture_output=True, text=True, timeout=60).stdout
    reqs = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = "Non-2xx" in out or "Socket errors" in out
    c.ok(reqs and int(reqs.group(1)) > 100 and not errors, "wrk %s during a generation: %s requests, no errors" % (path, reqs.group(1) if reqs else "?"))
    if p99:
        print("wrk %s: %.0f req/s, p50 %.2f ms, p99 %.2f ms (2 threads, 16 connections, 3 s, loopback)" %
              (path, float(rps.group(1)), ms(*p50.groups()), ms(*p99.groups())), flush=True)
    else:
        print(out)
st = requests.get(U + "/v1/jobs/" + busy).json()["job"]["state"]
step1 = requests.get(U + "/sdapi/v1/progress").json()["state"]["sampling_step"]
c.ok(st == "running" and step1 > step0, "the generation ran throughout (state %s, step %d -> %d of 150)" % (st, step0, step1))
requests.delete(U + "/v1/jobs/" + busy)
c.ok(srv.stop() == 0, "server exits 0")

# 50 concurrent submissions against a queue of 20
q = Server(SDXL, MODEL, work, ["--queue-limit", "20", "--paused", "--no-access-log"], name="queue").start()
barrier = threading.Barrier(50)
results = []


def submit(i):
    barrier.wait()
    r = requests.post(q.url + "/v1/jobs", json={"prompt": "job %d" % i, "width": 64, "height": 64, "steps": 2, "seed": i}, timeout=60)
    results.append((r.status_code, r.headers.get("Retry-After"), r.json()))


ths = [threading.Thread(target=submit, args=(i,)) for i in range(50)]
for t in ths:
    t.start()
for t in ths:
    t.join()
codes = sorted(s for s, _, _ in results)
acc = [j["id"] for s, _, j in results if s == 202]
c.ok(codes.count(202) == 20 and codes.count(429) == 30, "50 concurrent submissions: %d accepted, %d got 429" % (codes.count(202), codes.count(429)))
c.ok(all(ra and int(ra) > 0 for s, ra, _ in results if s == 429), "every 429 carries Retry-After")
c.ok(requests.get(q.url + "/ready").status_code == 503, "/ready is 503 while the queue is full")
# an event stream of a job that waits in the queue gets a keep-alive comment every 15 s
with requests.get(q.url + "/v1/jobs/%s/events" % acc[0], stream=True, timeout=30) as s:
    t0, lines = time.time(), []
    for line in s.iter_lines(decode_unicode=True):
        lines.append(line)
        if line.startswith(": keep-alive") or time.time() - t0 > 20:
            break
c.ok(any(l.startswith(": keep-alive") for l in lines), "queued job's event stream gets a keep-alive comment after %.1f s" % (time.time() - t0))
c.ok(requests.post(q.url + "/v1/resume").status_code == 200, "POST /v1/resume starts the runner")
deadline = time.time() + 300
states = {}
while time.time() < deadline:
    states = {j: requests.get(q.url + "/v1/jobs/" + j).json()["job"] for j in acc}
    if all(s["state"] == "done" for s in states.values()):
        break
    time.sleep(0.2)
c.ok(len(states) == 20 and all(s["state"] == "done" and s["n_images"] == 1 for s in states.values()),
     "all 20 accepted jobs completed (%d done)" % sum(s["state"] == "done" for s in states.values()))
c.ok(requests.get(q.url + "/ready").status_code == 200, "/ready is 200 once the queue drains")
m = requests.get(q.url + "/metrics").text
c.ok('sdxl_jobs{state="done"} 20' in m and "sdxl_job_latency_seconds_count 20" in m, "/metrics counts 20 done jobs and 20 latencies")
c.ok(q.stop() == 0, "queue server exits 0")
c.done()
