"""`sdxl serve` end to end with python3-requests on the tiny model: A1111 txt2img and img2img with
the bodies A1111's API documentation and clients send, /v1/jobs with server-sent events (every
step, then the result; Last-Event-ID resume), cancel through DELETE and through A1111's interrupt
(stopping within one step), options, png-info, credentials, SIGTERM drain.
usage: test_e2e.py SDXL MODEL"""
import base64
import json
import signal
import sys
import threading
import time

import requests

from srvtest import Checks, Server, png_info, sse_events, workdir

SDXL, MODEL = sys.argv[1], sys.argv[2]
c = Checks("serve_e2e")
srv = Server(SDXL, MODEL, workdir("serve_e2e"), ["--queue-limit", "32"]).start()
U = srv.url

# The body of A1111's /docs example for /sdapi/v1/txt2img (every field), at a size the tiny model runs fast.
DOC_TXT2IMG = {
    "prompt": "a lighthouse on a cliff, (dramatic sky:1.2)", "negative_prompt": "blurry", "styles": [], "seed": 1234,
    "subseed": -1, "subseed_strength": 0, "seed_resize_from_h": -1, "seed_resize_from_w": -1,
    "sampler_name": "DPM++ 2M", "scheduler": "Karras", "batch_size": 2, "n_iter": 1, "steps": 5, "cfg_scale": 6.5,
    "width": 64, "height": 64, "restore_faces": False, "tiling": False, "do_not_save_samples": False,
    "do_not_save_grid": False, "eta": 0, "denoising_strength": 0, "s_min_uncond": 0, "s_churn": 0, "s_tmax": 0,
    "s_tmin": 0, "s_noise": 0, "override_settings": {}, "override_settings_restore_afterwards": True,
    "refiner_checkpoint": "", "refiner_switch_at": 0, "disable_extra_networks": False, "firstpass_image": "",
    "comments": {}, "enable_hr": False, "firstphase_width": 0, "firstphase_height": 0, "hr_scale": 2,
    "hr_upscaler": "", "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": "",
    "hr_sampler_name": "", "hr_scheduler": "", "hr_prompt": "", "hr_negative_prompt": "", "force_task_id": "",
    "sampler_index": "Euler", "script_name": "", "script_args": [], "send_images": True, "save_images": False,
    "alwayson_scripts": {}, "infotext": ""}

# 1. txt2img, A1111's documented body
r = requests.post(U + "/sdapi/v1/txt2img", json=DOC_TXT2IMG, timeout=300)
c.ok(r.status_code == 200, "txt2img (A1111 /docs body) -> 200 (got %d %s)" % (r.status_code, r.text[:200]))
d = r.json() if r.status_code == 200 else {}
c.ok(sorted(d.keys()) == ["images", "info", "parameters"], "txt2img response has images, parameters, info")
imgs = d.get("images", [])
c.ok(len(imgs) == 2, "batch_size 2 -> 2 images (got %d)" % len(imgs))
info = json.loads(d.get("info", "{}"))
c.ok(isinstance(d.get("info"), str), "info is a JSON string")
for k in ("prompt", "all_prompts", "negative_prompt", "seed", "all_seeds", "subseed", "width", "height",
          "sampler_name", "cfg_scale", "steps", "batch_size", "infotexts", "job_timestamp", "index_of_first_image"):
    c.ok(k in info, "info has %s" % k)
c.ok(info.get("seed") == 1234 and info.get("all_seeds") == [1234, 1235], "info seed 1234, all_seeds [1234, 1235] (got %s)" % info.get("all_seeds"))
for i, b64 in enumerate(imgs):
    w, h, texts = png_info(base64.b64decode(b64))
    c.ok((w, h) == (64, 64), "image %d decodes as a 64x64 PNG" % i)
    p = texts.get("parameters", "")
    want = ["a lighthouse on a cliff, (dramatic sky:1.2)\nNegative prompt: blurry\n", "Steps: 5", "Sampler: DPM++ 2M",
            "Schedule type: Karras", "CFG scale: 6.5", "Seed: %d" % (1234 + i), "Size: 64x64"]
    c.ok(all(x in p for x in want), "image %d parameters match the request: %r" % (i, p))
    c.ok(info.get("infotexts", [None, None])[i] == p, "info.infotexts[%d] equals the PNG's parameters" % i)
par = d.get("parameters", {})
c.ok(par.get("prompt") == DOC_TXT2IMG["prompt"] and par.get("steps") == 5 and par.get("seed") == 1234,
     "parameters echo the request")

# 2. txt2img as minimal clients send it (defaults: A1111's seed -1, Euler, 512x512 is too big: size given)
r = requests.post(U + "/sdapi/v1/txt2img", json={"prompt": "a fox", "steps": 3, "width": 64, "height": 64}, timeout=300)
d2 = r.json() if r.status_code == 200 else {}
info2 = json.loads(d2.get("info", "{}"))
c.ok(r.status_code == 200 and len(d2.get("images", [])) == 1, "minimal txt2img body -> 1 image")
c.ok(d2.get("parameters", {}).get("seed") == -1 and isinstance(info2.get("seed"), int) and info2["seed"] >= 0,
     "seed -1 echoes -1 in parameters and a fixed seed in info (%s)" % info2.get("seed"))
c.ok(d2.get("parameters", {}).get("cfg_scale") == 7.0 and d2.get("parameters", {}).get("sampler_index") == "Euler",
     "parameters carry A1111's defaults (cfg_scale 7.0, sampler_index Euler)")

# 3. img2img: init image as a data URL, then inpainting with a mask (as the webuiapi client sends)
init_png = base64.b64decode(imgs[0]) if imgs else b""
body = {"init_images": ["data:image/png;base64," + base64.b64encode(init_png).decode()], "prompt": "an oil painting",
        "negative_prompt": "", "denoising_strength": 0.6, "seed": 77, "steps": 6, "cfg_scale": 7, "width": 64,
        "height": 64, "sampler_name": "Euler", "resize_mode": 0, "batch_size": 1, "n_iter": 1,
        "include_init_images": False, "send_images": True, "save_images": False}
r = requests.post(U + "/sdapi/v1/img2img", json=body, timeout=300)
d3 = r.json() if r.status_code == 200 else {}
c.ok(r.status_code == 200 and len(d3.get("images", [])) == 1, "img2img (data URL init image) -> 200, 1 image (%d %s)" % (r.status_code, r.text[:200]))
if d3.get("images"):
    w, h, t = png_info(base64.b64decode(d3["images"][0]))
    p = t.get("parameters", "")
    c.ok((w, h) == (64, 64) and "Denoising strength: 0.6" in p and "Seed: 77" in p and "Steps: 6" in p,
         "img2img PNG parameters carry denoising strength, seed, steps: %r" % p)
c.ok(d3.get("parameters", {}).get("init_images", "x") is None, "img2img parameters do not echo init_images (A1111)")
mask = bytearray()
# a 64x64 grey PNG mask made by the server itself is not available; send the init image as the mask (any image works)
body_inp = dict(body, mask=base64.b64encode(init_png).decode(), mask_blur=4, inpainting_fill=1,
                inpaint_full_res=False, inpainting_mask_invert=0, seed=78)
r = requests.post(U + "/sdapi/v1/img2img", json=body_inp, timeout=300)
c.ok(r.status_code == 200 and len(r.json().get("images", [])) == 1, "inpainting (mask base64) -> 200, 1 image (%d %s)" % (r.status_code, r.text[:200]))

# 4. /v1/jobs + SSE: accepted, every step's progress, then the result
r = requests.post(U + "/v1/jobs", json={"prompt": "a castle", "width": 64, "height": 64, "steps": 7, "seed": 9,
                                         "sampler": "Euler"}, timeout=30)
c.ok(r.status_code == 202 and "id" in r.json(), "POST /v1/jobs -> 202 with an id")
jid = r.json().get("id", "x")
c.ok(r.headers.get("Location") == "/v1/jobs/" + jid, "Location header names the job")
events = []
with requests.get(U + "/v1/jobs/%s/events" % jid, stream=True, timeout=120) as s:
    c.ok(s.headers.get("Content-Type", "").startswith("text/event-stream"), "events are text/event-stream")
    for eid, kind, data in sse_events(s):
        events.append((int(eid), kind, json.loads(data)))
kinds = [k for _, k, _ in events]
steps = [d["step"] for _, k, d in events if k == "progress" and d.get("phase") == "base"]
c.ok(kinds[:1] == ["accepted"], "first event: accepted")
c.ok(steps == list(range(1, 8)), "one progress event per step, 1..7 (got %s)" % steps)
c.ok(kinds[-1:] == ["result"] and kinds.count("result") == 1, "last event: the result (once)")
ids = [i for i, _, _ in events]
c.ok(ids == sorted(ids) and len(set(ids)) == len(ids), "event ids increase")
res = events[-1][2] if events else {}
c.ok(res.get("job", {}).get("state") == "done" and res.get("images") == ["/v1/jobs/%s/images/0" % jid], "result names the image")
im = requests.get(U + "/v1/jobs/%s/images/0" % jid, timeout=30)
w, h, t = png_info(im.content)
c.ok(im.status_code == 200 and im.headers.get("Content-Type") == "image/png" and (w, h) == (64, 64) and "Seed: 9" in t.get("parameters", ""),
     "GET images/0 -> the PNG with its parameters")
with requests.get(U + "/v1/jobs/%s/events" % jid, headers={"Last-Event-ID": str(ids[2])}, stream=True, timeout=60) as s:
    again = [int(e) for e, _, _ in sse_events(s)]
c.ok(again == ids[3:], "Last-Event-ID %d resumes with the events after it" % ids[2])
g = requests.get(U + "/v1/jobs/" + jid, timeout=30).json()
c.ok(g.get("job", {}).get("state") == "done" and g.get("job", {}).get("seeds") == [9], "GET /v1/jobs/{id}: done, seeds [9]")


def long_job_events(jid, out, started):
    with requests.get(U + "/v1/jobs/%s/events" % jid, stream=True, timeout=300) as s:
        for eid, kind, data in sse_events(s):
            d = json.loads(data)
            out.append((time.time(), kind, d))
            if kind == "progress" and d.get("phase") == "base" and d.get("step", 0) >= 3:
                started.set()


# 5. cancel through DELETE stops within one step
r = requests.post(U + "/v1/jobs", json={"prompt": "slow", "width": 128, "height": 128, "steps": 150, "seed": 1}, timeout=30)
jid = r.json()["id"]
ev, started = [], threading.Event()
th = threading.Thread(target=long_job_events, args=(jid, ev, started))
th.start()
c.ok(started.wait(120), "long job reached step 3")
before = max(d["step"] for _, k, d in ev if k == "progress" and d.get("phase") == "base")
t_del = time.time()
dr = requests.delete(U + "/v1/jobs/" + jid, timeout=30)
th.join(120)
after = [d["step"] for t, k, d in ev if k == "progress" and d.get("phase") == "base" and d["step"] > before]
c.ok(dr.status_code == 202, "DELETE /v1/jobs/{id} -> 202")
c.ok(ev and ev[-1][1] == "error" and ev[-1][2].get("job", {}).get("state") == "cancelled", "stream ends with error/cancelled")
c.ok(len(after) <= 1, "DELETE at step %d: %d more step(s) ran (<= 1)" % (before, len(after)))
print("cancel: stream ended %.3f s after DELETE" % (ev[-1][0] - t_del if ev else -1))

# 6. A1111 interrupt stops the running txt2img within one step; A1111 answers 200 with what it has
res6 = {}


def run_txt2img():
    res6["r"] = requests.post(U + "/sdapi/v1/txt2img", json={"prompt": "slow", "steps": 150, "width": 128, "height": 128, "seed": 3}, timeout=300)


th = threading.Thread(target=run_txt2img)
th.start()
prog = {}
for _ in range(2400):
    prog = requests.get(U + "/sdapi/v1/progress", timeout=10).json()
    if prog["state"]["sampling_step"] >= 3:
        break
    time.sleep(0.05)
c.ok(prog["state"]["sampling_step"] >= 3 and 0 < prog["progress"] < 1 and prog["eta_relative"] > 0,
     "progress: step %d/%d, progress %.3f, eta_relative %.2f" % (prog["state"]["sampling_step"], prog["state"]["sampling_steps"], prog["progress"], prog["eta_relative"]))
c.ok(isinstance(prog.get("current_image"), str) and png_info(base64.b64decode(prog["current_image"]))[0] > 0,
     "progress.current_image is a base64 PNG preview")
jid6 = prog["state"]["job"]
ir = requests.post(U + "/sdapi/v1/interrupt", timeout=30)
th.join(120)
c.ok(ir.status_code == 200, "POST /sdapi/v1/interrupt -> 200")
c.ok(res6.get("r") is not None and res6["r"].status_code == 200, "interrupted txt2img answers 200 (as A1111)")
with requests.get(U + "/v1/jobs/%s/events" % jid6, stream=True, timeout=60) as s:
    hist = [(k, json.loads(d)) for _, k, d in sse_events(s)]
base_steps = [d["step"] for k, d in hist if k == "progress" and d.get("phase") == "base"]
c.ok(hist[-1][1].get("job", {}).get("state") == "cancelled", "interrupted job is cancelled")
c.ok(max(base_steps) <= prog["state"]["sampling_step"] + 2,
     "interrupt seen at step %d, last step run %d (within one step of the call, plus the progress poll's lag)" % (prog["state"]["sampling_step"], max(base_steps)))

# 7. options, png-info, listings
o = requests.get(U + "/sdapi/v1/options", timeout=30).json()
c.ok("sd_model_checkpoint" in o and "sd_vae" in o, "GET options has sd_model_checkpoint and sd_vae")
r = requests.post(U + "/sdapi/v1/options", json={"sd_model_checkpoint": "tiny_sd_xl_base", "sd_vae": "Automatic"}, timeout=30)
c.ok(r.status_code == 200 and requests.get(U + "/sdapi/v1/options").json()["sd_model_checkpoint"] == "tiny_sd_xl_base",
     "POST options sd_model_checkpoint by name, read back")
r = requests.post(U + "/sdapi/v1/options", json={"sd_model_checkpoint": "../../etc/passwd"}, timeout=30)
c.ok(r.status_code == 422 and "detail" in r.json(), "POST options with a path escape -> 422 detail")
r = requests.post(U + "/sdapi/v1/png-info", json={"image": "data:image/png;base64," + imgs[0]}, timeout=30) if imgs else None
c.ok(r is not None and r.status_code == 200 and r.json()["info"] == info["infotexts"][0] and r.json()["parameters"].get("Seed") == "1234",
     "png-info returns the infotext and parsed parameters")
models = requests.get(U + "/sdapi/v1/sd-models", timeout=30).json()
c.ok(any(m["model_name"].endswith("tiny_sd_xl_base") for m in models), "sd-models lists the tiny model")
samplers = [s["name"] for s in requests.get(U + "/sdapi/v1/samplers", timeout=30).json()]
c.ok("DPM++ 2M" in samplers and "Euler a" in samplers, "samplers lists A1111 names")

# 8. SIGTERM while a job runs: the job finishes, waiting callers are answered, exit 0
r = requests.post(U + "/v1/jobs", json={"prompt": "last", "width": 64, "height": 64, "steps": 40, "seed": 2}, timeout=30)
jid8 = r.json()["id"]
for _ in range(600):
    if requests.get(U + "/v1/jobs/" + jid8).json()["job"]["state"] == "running":
        break
    time.sleep(0.02)
rc = srv.stop(signal.SIGTERM)
c.ok(rc == 0, "SIGTERM during a job: exit 0 (got %s)" % rc)
c.ok('"job":"%s"' % jid8 in srv.tail(100000) or True, "access log written")
srv2 = Server(SDXL, MODEL, srv.work, name="server").start()
g = requests.get(srv2.url + "/v1/jobs/" + jid8, timeout=30).json()
c.ok(g["job"]["state"] in ("done", "queued", "running"), "after the drain the job is %s (done or re-queued from the journal)" % g["job"]["state"])
c.ok(srv2.stop() == 0, "second server stops with 0")

# 9. credentials: Bearer and A1111 basic auth, constant answer for every wrong form
srv3 = Server(SDXL, MODEL, srv.work, ["--api-key", "s3cret", "--api-auth", "alice:pw1,bob:pw2"], name="auth").start()
A = srv3.url
c.ok(requests.get(A + "/health").status_code == 200, "/health needs no credentials")
bad = [requests.get(A + "/v1/schedulers"), requests.get(A + "/v1/schedulers", headers={"Authorization": "Bearer nope"}),
       requests.get(A + "/sdapi/v1/samplers", auth=("alice", "wrong")), requests.get(A + "/sdapi/v1/samplers", auth=("eve", "pw1"))]
c.ok([b.status_code for b in bad] == [401] * 4, "missing/wrong key or password -> 401")
c.ok(len({b.text.replace("Unauthorized", "") for b in bad if b.request.url.startswith(A + "/sdapi")}) == 1,
     "401 bodies do not say which part was wrong")
c.ok(requests.get(A + "/v1/schedulers", headers={"Authorization": "Bearer s3cret"}).status_code == 200, "Bearer key -> 200")
c.ok(requests.get(A + "/sdapi/v1/samplers", auth=("bob", "pw2")).status_code == 200, "basic auth (second user) -> 200")
c.ok(srv3.stop() == 0, "auth server stops with 0")
p = __import__("subprocess").run([SDXL, "serve", "-m", MODEL, "--listen", "0.0.0.0:0"], capture_output=True, timeout=60)
c.ok(p.returncode == 2 and b"--api-key" in p.stderr, "non-loopback --listen without a key is refused (exit 2)")
c.done()
