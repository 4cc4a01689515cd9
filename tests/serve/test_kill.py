"""kill -9 of `sdxl serve` while jobs run: after a restart on the same journal every accepted job
(/v1/jobs and A1111 callers alike) completes exactly once and is visible at GET /v1/jobs/{id};
images finished before the kill are not redone, no temporary or duplicate file is left.
usage: test_kill.py SDXL MODEL"""
import glob
import hashlib
import json
import os
import sys
import threading
import time

import requests

from srvtest import Checks, Server, png_info, sse_events, workdir

SDXL, MODEL = sys.argv[1], sys.argv[2]
c = Checks("serve_kill")
work = workdir("serve_kill")
srv = Server(SDXL, MODEL, work, ["--queue-limit", "64", "--no-merge"]).start()
U = srv.url
out_dir = os.path.join(work, "server_out")

ids = []
for i in range(16):
    r = requests.post(U + "/v1/jobs", json={"prompt": "job %d" % i, "width": 64, "height": 64, "steps": 24, "seed": 100 + i}, timeout=60)
    c.ok(r.status_code == 202, "job %d accepted" % i)
    ids.append(r.json()["id"])
a1111_errors = []


def a1111(i):
    try:
        requests.post(U + "/sdapi/v1/txt2img", json={"prompt": "a1111 %d" % i, "width": 64, "height": 64, "steps": 24, "seed": 7 + i}, timeout=600)
    except requests.RequestException as e:
        a1111_errors.append(type(e).__name__)


ths = [threading.Thread(target=a1111, args=(i,)) for i in range(2)]
for t in ths:
    t.start()
# kill once a few jobs are done and one is mid-step
deadline = time.time() + 300
while time.time() < deadline:
    jobs = requests.get(U + "/v1/jobs", timeout=30).json()["jobs"]
    done = [j for j in jobs if j["state"] == "done"]
    prog = requests.get(U + "/sdapi/v1/progress", timeout=30).json()["state"]
    if len(done) >= 3 and prog["sampling_step"] >= 2:
        break
    time.sleep(0.05)
before = {j["id"]: j for j in requests.get(U + "/v1/jobs", timeout=30).json()["jobs"]}
done_before = [i for i, j in before.items() if j["state"] == "done"]
hashes = {i: hashlib.sha256(open(p, "rb").read()).hexdigest() for i in done_before for p in glob.glob(os.path.join(out_dir, "*%s*.png" % i))}
srv.kill9()
for t in ths:
    t.join()
all_ids = sorted(before)
print("killed with %d done, %d running, %d queued (of %d)" % (len(done_before), sum(j["state"] == "running" for j in before.values()),
                                                             sum(j["state"] == "queued" for j in before.values()), len(all_ids)))
c.ok(len(all_ids) == 18 and set(ids) <= set(all_ids), "18 accepted jobs (16 /v1, 2 A1111) before the kill")
c.ok(len(a1111_errors) == 2, "the two waiting A1111 callers saw the connection drop")

srv2 = Server(SDXL, MODEL, work, ["--queue-limit", "64", "--no-merge"]).start()
U = srv2.url
deadline = time.time() + 600
while time.time() < deadline:
    jobs = {j["id"]: j for j in requests.get(U + "/v1/jobs", timeout=30).json()["jobs"]}
    if all(jobs.get(i, {}).get("state") in ("done", "failed", "cancelled") for i in all_ids):
        break
    time.sleep(0.2)
for i in all_ids:
    g = requests.get(U + "/v1/jobs/" + i, timeout=30)
    j = g.json().get("job", {}) if g.status_code == 200 else {}
    files = glob.glob(os.path.join(out_dir, "*%s*" % i))
    pngs = [f for f in files if f.endswith(".png")]
    good = g.status_code == 200 and j.get("state") == "done" and j.get("n_images") == 1 and len(pngs) == 1 and len(files) == 1
    if good:
        w, h, t = png_info(open(pngs[0], "rb").read())
        good = (w, h) == (64, 64) and "Seed: %d" % j["seeds"][0] in t.get("parameters", "")
    c.ok(good, "job %s (%s before the kill): done once, one PNG, visible at GET /v1/jobs/{id}" % (i, before[i]["state"]))
for i, hsh in hashes.items():
    p = glob.glob(os.path.join(out_dir, "*%s*.png" % i))
    c.ok(len(p) == 1 and hashlib.sha256(open(p[0], "rb").read()).hexdigest() == hsh, "job %s done before the kill was not redone" % i)
c.ok(not glob.glob(os.path.join(out_dir, "*.tmp")), "no temporary file left")
with requests.get(U + "/v1/jobs/%s/events" % done_before[0], stream=True, timeout=60) as s:
    ev = [(k, json.loads(d)) for _, k, d in sse_events(s)]
c.ok(ev and ev[-1][0] == "result" and ev[-1][1]["job"]["state"] == "done", "events of a job from before the restart end with its result")
c.ok(srv2.stop() == 0, "restarted server exits 0")
c.done()
