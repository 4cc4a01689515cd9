"""Malformed-request suite against a running `sdxl serve`: >= 1,200 requests of >= 48 kinds (bad
JSON, wrong types, out-of-range values, oversize bodies, huge base64, bad images, path traversal,
bad credentials, wrong methods, slow and truncated bodies, protocol garbage, concurrent cancels).
Each gets its exact status code (or, for connection-level attacks, a closed connection); the server
never crashes, and after every kind the next valid request is answered correctly.
usage: test_malformed.py SDXL MODEL"""
import base64
import json
import socket
import struct
import sys
import threading
import time
import zlib

import requests

from srvtest import Checks, Server, png_info, workdir

SDXL, MODEL = sys.argv[1], sys.argv[2]
c = Checks("serve_malformed")
work = workdir("serve_malformed")
LIM = ["--max-body", "1048576", "--max-image-bytes", "262144", "--max-pixels", "1048576", "--max-prompt", "4096",
       "--max-images", "8", "--max-json-depth", "32", "--idle-timeout", "2", "--body-timeout", "3"]
srv = Server(SDXL, MODEL, work, LIM).start()
U = srv.url
S = requests.Session()
kinds = {}
total = [0]


def expect(kind, status, method, path, **kw):
    total[0] += 1
    try:
        r = S.request(method, U + path, timeout=60, **kw)
        got = r.status_code
    except requests.RequestException as e:
        got = "exception %s" % type(e).__name__
        r = None
    k = kinds.setdefault(kind, [0, 0])
    k[0] += 1
    if got == status and (r is None or status < 400 or _shape_ok(path, r)):
        k[1] += 1
    elif k[0] - k[1] <= 3:
        print("  %s: %s %s -> %s, want %s: %s" % (kind, method, path, got, status, (r.text[:160] if r is not None else "")))
    return r


def _shape_ok(path, r):
    """Errors in the route's shape: A1111 {"detail"}, ours {"error":{"code","message"}}."""
    if r.status_code >= 500 and path.startswith("/sdapi"):
        return True
    try:
        j = r.json()
    except ValueError:
        return False
    if path.startswith("/sdapi"):
        return "detail" in j
    return "error" in j and "code" in j["error"] and "message" in j["error"]


def raw(data, wait=8, chunks=None, delay=0):
    """Sends bytes on a fresh connection; returns what came back before close ('' = closed silently)."""
    total[0] += 1
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.settimeout(wait)
    out = b""
    try:
        if chunks:
            for ch in chunks:
                s.sendall(ch)
                time.sleep(delay)
        else:
            s.sendall(data)
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except socket.timeout:
        out += b"<timeout>" if not out else b""
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        s.close()
    return out


def raw_kind(kind, want, data=None, **kw):
    out = raw(data, **kw)
    k = kinds.setdefault(kind, [0, 0])
    k[0] += 1
    status = out[9:12].decode("latin-1") if out.startswith(b"HTTP/1.") else ("closed" if out in (b"",) else out[:40])
    if status == want:
        k[1] += 1
    elif k[0] - k[1] <= 3:
        print("  %s: got %r, want %s" % (kind, status, want))


def next_valid(after):
    """The next valid request is served correctly."""
    r = S.post(U + "/v1/validate", json={"prompt": "ok", "width": 64, "height": 64, "steps": 2}, timeout=60)
    good = r.status_code == 200 and r.json().get("valid") is True
    if not good:
        print("  next valid request after %s failed: %s %s" % (after, r.status_code, r.text[:200]))
    return good


def png_bytes(w, h, color=(200, 30, 30), rows=None):
    row = b"\0" + bytes(color) * w
    raw_ = zlib.compress(row * (h if rows is None else rows))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", raw_) + chunk(b"IEND", b"")


GOOD_PNG = base64.b64encode(png_bytes(64, 64)).decode()
BOMB_PNG = base64.b64encode(png_bytes(20000, 20000, rows=1)).decode()  # a valid header announcing 400 M pixels
T2I = "/sdapi/v1/txt2img"
I2I = "/sdapi/v1/img2img"

# a finished job for the id-based routes
r = S.post(U + "/v1/jobs", json={"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 1}, timeout=60)
JOB = r.json()["id"]
for _ in range(600):
    if S.get(U + "/v1/jobs/" + JOB).json()["job"]["state"] == "done":
        break
    time.sleep(0.05)

BAD_JSON = ['{"prompt":', '{"prompt": "a",}', "{'prompt': 'a'}", '{prompt: "a"}', '{"a" 1}', "[1,2", "nul", "tru",
            '{"a":1}}', '"unterminated', '{"a":01}', '{"a":.5}', '{"a":1.}', '{"a":-}', '{"a":"\\x"}', '{"a":"\\u12"}',
            '{"a":NaN}', '{"a":Infinity}', "{\"a\":\"\x01\"}", '{"a":1 "b":2}', "\x00", "{}garbage", ",", ":", "{,}",
            '{"a":[1,]}', '{"a":"\xff"}']
NOT_OBJECT = ["[]", "1", '"s"', "null", "true", "[{}]", "3.5", '["prompt"]']
for p in BAD_JSON:
    expect("bad_json_v1", 400, "POST", "/v1/jobs", data=p.encode("latin-1"), headers={"Content-Type": "application/json"})
    expect("bad_json_a1111", 422, "POST", T2I, data=p.encode("latin-1"), headers={"Content-Type": "application/json"})
    expect("bad_json_validate", 400, "POST", "/v1/validate", data=p.encode("latin-1"))
for p in NOT_OBJECT:
    expect("not_object_v1", 422, "POST", "/v1/jobs", data=p)
    expect("not_object_a1111", 422, "POST", I2I, data=p)
    expect("not_object_options", 422, "POST", "/sdapi/v1/options", data=p)
for _ in range(10):
    expect("empty_body_v1", 400, "POST", "/v1/jobs", data=b"")
    expect("empty_body_a1111", 422, "POST", T2I, data=b"")
next_valid("json")

WRONG_TYPES = [("steps", "abc"), ("steps", [1]), ("steps", {}), ("steps", True), ("steps", 4.5), ("width", "64"),
               ("height", "tall"), ("cfg_scale", "high"), ("cfg_scale", []), ("seed", "lucky"), ("seed", {}),
               ("prompt", 5), ("prompt", ["a"]), ("negative_prompt", 1), ("batch_size", "2"), ("sampler_name", 3),
               ("n_iter", "x"), ("override_settings", "x"), ("enable_hr", "yes"), ("width", {"a": 1})]
for f, v in WRONG_TYPES + [("denoising_strength", "half"), ("denoising_strength", [])]:
    for path in (T2I, I2I):
        if f == "denoising_strength" and path == T2I:
            continue  # txt2img reads it only for hires fix
        body = {"prompt": "a", "width": 64, "height": 64, "steps": 2, f: v}
        if path == I2I:
            body["init_images"] = [GOOD_PNG]
        expect("wrong_type_a1111", 422, "POST", path, json=body)
V1_WRONG = [("steps", "abc"), ("width", "64"), ("height", []), ("cfg_scale", "x"), ("seed", "s"), ("prompt", 5),
            ("negative_prompt", {}), ("batch_size", "2"), ("sampler", 7), ("loras", "x"), ("loras", [1]),
            ("priority", []), ("strength", "x"), ("controlnets", 5)]
for f, v in V1_WRONG:
    expect("wrong_type_v1", 422, "POST", "/v1/jobs", json={"prompt": "a", "width": 64, "height": 64, f: v})
    expect("wrong_type_validate", 200, "POST", "/v1/validate", json={"prompt": "a", f: v})
RANGES = [("steps", 0), ("steps", -1), ("steps", 100000), ("width", 7), ("width", -64), ("width", 100000),
          ("height", -8), ("cfg_scale", -1), ("cfg_scale", 1e9), ("seed", -2), ("seed", 2 ** 40), ("batch_size", -1),
          ("batch_size", 10000), ("n_iter", 0)]
for f, v in RANGES:
    body = {"prompt": "a", "width": 64, "height": 64, "steps": 2, f: v}
    expect("out_of_range_a1111", 422, "POST", T2I, json=body)
    if f != "n_iter":
        expect("out_of_range_v1", 422, "POST", "/v1/jobs", json=body)
for v in [2, -0.5, 1.01, 100]:
    expect("out_of_range_strength", 422, "POST", I2I, json={"prompt": "a", "init_images": [GOOD_PNG], "denoising_strength": v})
    expect("out_of_range_strength_v1", 422, "POST", "/v1/jobs", json={"prompt": "a", "init_image": "data:image/png;base64," + GOOD_PNG, "strength": v})
for name in ["DPM++ 9M", "eulerx", "k_unknown", "", "Karras", "DDIM Karras Turbo", "\u00e9", "a" * 200]:
    expect("unknown_sampler", 422, "POST", T2I, json={"prompt": "a", "width": 64, "height": 64, "sampler_name": name})
    expect("unknown_sampler_v1", 422, "POST", "/v1/jobs", json={"prompt": "a", "width": 64, "height": 64, "sampler": name})
for bs, ni in [(9, 1), (3, 3), (8, 2), (64, 1), (1, 9)]:
    expect("too_many_images", 422, "POST", T2I, json={"prompt": "a", "width": 64, "height": 64, "batch_size": bs, "n_iter": ni})
for n in [4097, 5000, 100000]:
    expect("prompt_too_long", 422, "POST", T2I, json={"prompt": "a" * n, "width": 64, "height": 64})
    expect("prompt_too_long_v1", 422, "POST", "/v1/jobs", json={"prompt": "a" * n})
    expect("negative_too_long", 422, "POST", T2I, json={"prompt": "a", "negative_prompt": "b" * n})
next_valid("fields")

for n in [1048577, 1500000, 3000000]:
    expect("body_too_large_v1", 413, "POST", "/v1/jobs", data=b" " * n)
    expect("body_too_large_a1111", 413, "POST", T2I, data=b" " * n)


def gen_chunks(n):
    for _ in range(n):
        yield b"x" * 65536


for n in [17, 32]:
    expect("chunked_too_large", 413, "POST", "/v1/jobs", data=gen_chunks(n))
big = base64.b64encode(b"\0" * 300000).decode()
for f in range(4):
    expect("base64_too_large", 413, "POST", I2I, json={"prompt": "a", "init_images": [big]})
    expect("base64_too_large_mask", 413, "POST", I2I, json={"prompt": "a", "init_images": [GOOD_PNG], "mask": big})
    expect("base64_too_large_pnginfo", 413, "POST", "/sdapi/v1/png-info", json={"image": big})
for bad in ["!!!!", "abc$", "ab=c", "a", "====", "data:image/png;base64,@@@", "data:image/png,abcd", "data:;base64",
            "http://127.0.0.1/x.png", "https://example.invalid/a.png", "\u00e9\u00e9\u00e9\u00e9"]:
    expect("bad_base64", 422, "POST", I2I, json={"prompt": "a", "width": 64, "height": 64, "init_images": [bad]})
    expect("bad_base64_mask", 422, "POST", I2I, json={"prompt": "a", "init_images": [GOOD_PNG], "mask": bad})
    expect("bad_base64_pnginfo", 422, "POST", "/sdapi/v1/png-info", json={"image": bad})
NOT_IMAGES = [b"hello world", b"\x89PNG\r\n\x1a\n", png_bytes(64, 64)[:40], png_bytes(64, 64)[:-20], b"GIF89a" + b"\0" * 40,
              b"\xff\xd8\xff\xe0" + b"\0" * 30, b"RIFF\0\0\0\0WEBPVP8 ", bytes(range(256)) * 4]
for nb in NOT_IMAGES:
    b64 = base64.b64encode(nb).decode()
    expect("bad_image", 422, "POST", I2I, json={"prompt": "a", "width": 64, "height": 64, "init_images": [b64]})
    expect("bad_image_pnginfo", 422, "POST", "/sdapi/v1/png-info", json={"image": b64})
    expect("bad_image_v1", 422, "POST", "/v1/jobs", json={"prompt": "a", "init_image": "data:image/png;base64," + b64})
for _ in range(5):
    expect("pixel_bomb", 413, "POST", I2I, json={"prompt": "a", "init_images": [BOMB_PNG]})
    expect("pixel_bomb_pnginfo", 413, "POST", "/sdapi/v1/png-info", json={"image": BOMB_PNG})
expect("too_many_init_images", 422, "POST", I2I, json={"prompt": "a", "init_images": [GOOD_PNG] * 9})
expect("init_images_wrong_type", 422, "POST", I2I, json={"prompt": "a", "init_images": [5]})
expect("init_images_missing", 422, "POST", I2I, json={"prompt": "a", "init_images": []})
for _ in range(3):
    expect("pnginfo_missing", 422, "POST", "/sdapi/v1/png-info", json={})
    expect("pnginfo_empty", 404, "POST", "/sdapi/v1/png-info", json={"image": ""})
next_valid("images")

CN = [{"args": "x"}, {"args": [5]}, {"args": [{"enabled": True, "model": "canny"}]},
      {"args": [{"enabled": True, "model": "canny", "input_image": "@@"}]},
      {"args": [{"enabled": True, "model": "", "input_image": GOOD_PNG}]},
      {"args": [{"enabled": True, "model": "x", "input_image": base64.b64encode(b"nope").decode()}]}, {"nope": 1}]
for cn in CN:
    expect("controlnet_args", 422, "POST", T2I, json={"prompt": "a", "width": 64, "height": 64, "alwayson_scripts": {"controlnet": cn}})
expect("alwayson_not_object", 422, "POST", T2I, json={"prompt": "a", "alwayson_scripts": []})

TRAVERSAL = ["../../etc/passwd", "/etc/passwd", "..", "a/../../b", "models/../../x", "..\\..\\x", "~root/x", "/",
             "foo/../../../etc/shadow", "%2e%2e/x"]
for t in TRAVERSAL:
    expect("traversal_checkpoint", 422, "POST", T2I, json={"prompt": "a", "width": 64, "height": 64,
                                                          "override_settings": {"sd_model_checkpoint": t}})
    expect("traversal_options", 422, "POST", "/sdapi/v1/options", json={"sd_model_checkpoint": t})
    expect("traversal_v1_model", 422, "POST", "/v1/jobs", json={"prompt": "a", "model": t})
    expect("traversal_v1_lora", 422, "POST", "/v1/jobs", json={"prompt": "a", "loras": [{"name": t, "weight": 1}]})
    expect("traversal_vae", 422, "POST", "/sdapi/v1/options", json={"sd_vae": t})
for p in ["/v1/jobs/..%2F..%2Fetc%2Fpasswd", "/v1/jobs/%2e%2e", "/v1/jobs/" + JOB + "/images/..%2F..%2Fx",
          "/v1/jobs/a.b", "/v1/jobs/" + "a" * 100, "/v1/jobs/%00", "/v1/jobs/x%20y"]:
    for m in ("GET", "DELETE"):
        expect("traversal_url", 404, m, p)
next_valid("traversal")

# the web page's helpers: wrong types, unknown fields, bad images and specs
for body in [{"prompt": 1}, {"negative_prompt": []}, {"prompt": "a", "nope": 1}, {"prompt": "<lora:x:abc>"}]:
    expect("tokenize_bad", 422, "POST", "/v1/tokenize", json=body)
for body in [{}, {"image": 5}, {"image": "!!!"}, {"image": base64.b64encode(b"nope").decode()},
             {"image": GOOD_PNG, "preprocess": "canny:abc"}, {"image": GOOD_PNG, "preprocess": "sobel"},
             {"image": GOOD_PNG, "resize": "zoom"}, {"image": GOOD_PNG, "width": -1}, {"image": GOOD_PNG, "max_side": 1},
             {"image": GOOD_PNG, "extra": 1}]:
    expect("preprocess_bad", 422, "POST", "/v1/preprocess", json=body)
expect("preprocess_bomb", 413, "POST", "/v1/preprocess", json={"image": BOMB_PNG})
next_valid("web helpers")

for p in ["/v1/jobs/nope", "/v1/jobs/0", "/v1/jobs/ffffffffffffffff"]:
    expect("unknown_job", 404, "GET", p)
    expect("unknown_job_cancel", 404, "DELETE", p)
    expect("unknown_job_events", 404, "GET", p + "/events")
    expect("unknown_job_image", 404, "GET", p + "/images/0")
for n in ["1", "99", "abc", "-1", "1e3", "0x1", "9999999999"]:
    expect("bad_image_index", 404, "GET", "/v1/jobs/%s/images/%s" % (JOB, n))
for p in ["/index.html", "/app.js/x", "/v2/jobs", "/sdapi/v1/nope", "/sdapi/v2/txt2img", "/v1", "/v1/", "/health/", "/metrics/x",
          "/openapi.yaml", "/sdapi/v1/txt2img/x", "//v1/jobs", "/v1//jobs"]:
    expect("unknown_route", 404, "GET", p)
for m, p in [("GET", T2I), ("PUT", "/v1/jobs"), ("DELETE", "/health"), ("POST", "/v1/schedulers"), ("PATCH", "/v1/jobs/" + JOB),
             ("GET", "/sdapi/v1/interrupt"), ("DELETE", "/sdapi/v1/options"), ("PUT", "/v1/jobs/" + JOB),
             ("POST", "/v1/jobs/" + JOB), ("GET", "/v1/validate"), ("POST", "/metrics"), ("OPTIONS", "/v1/jobs")]:
    for _ in range(2):
        r = expect("wrong_method", 405, m, p)
for v in ["abc", "-1", "1.5", "x1", "1;2"]:
    expect("bad_last_event_id", 400, "GET", "/v1/jobs/%s/events" % JOB, headers={"Last-Event-ID": v})
for body in [{"sd_model_checkpoint": 5}, {"sd_vae": []}, {"CLIP_stop_at_last_layers": 0}, {"CLIP_stop_at_last_layers": "2"},
             {"CLIP_stop_at_last_layers": 99}, {"sd_model_checkpoint": "no_such_model"}]:
    expect("bad_options", 422, "POST", "/sdapi/v1/options", json=body)
next_valid("routes")

# connection-level: protocol garbage, slow and truncated bodies
for g in [b"GARBAGE\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00", b"GET\r\n\r\n", b"\r\n\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n"]:
    raw_kind("protocol_garbage", "closed", g) if g != b"GET / HTTP/9.9\r\n\r\n" else raw_kind("protocol_garbage", "505", g)
for cl in [b"abc", b"-5", b"1x", b"0x10"]:
    raw_kind("bad_content_length", "400", b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: " + cl + b"\r\n\r\n")
    raw_kind("huge_content_length", "413", b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999999999\r\n\r\n")
for _ in range(3):
    raw_kind("header_too_large", "431", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200000 + b"\r\n\r\n")
    raw_kind("bad_chunk", "400", b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
    raw_kind("expect_too_large", "413", b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\nExpect: 100-continue\r\n\r\n")
    raw_kind("traversal_raw", "404", b"GET /v1/jobs/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n")
    raw_kind("invalid_utf8_url", "404", b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n")
results = []


def slow(kind, want, **kw):
    t = threading.Thread(target=lambda: results.append((kind, want, raw(None, **kw))))
    t.start()
    return t


ths = []
for _ in range(4):
    ths.append(slow("slow_headers", "closed", chunks=[b"GET /hea"], delay=0, wait=10))
    ths.append(slow("slow_body", "closed", chunks=[b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a"], wait=10))
    ths.append(slow("trickled_body", "closed", chunks=[b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n"] + [b" "] * 6, delay=1, wait=15))
for t in ths:
    t.join()
for kind, want, out in results:
    k = kinds.setdefault(kind, [0, 0])
    k[0] += 1
    st = out[9:12].decode() if out.startswith(b"HTTP/1.") else ("closed" if out in (b"", b"<timeout>") else "?")
    if out == b"<timeout>":
        st = "still open"
    if st == want:
        k[1] += 1
    else:
        print("  %s: got %s, want %s" % (kind, st, want))
for n in [10, 50, 99]:
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"{" * n)
    s.close()
    total[0] += 1
    kinds.setdefault("truncated_body", [0, 0])[0] += 1
    kinds["truncated_body"][1] += 1 if next_valid("truncated") else 0
next_valid("connections")

# concurrent cancels of one running job, and of a finished one
r = S.post(U + "/v1/jobs", json={"prompt": "slow", "width": 128, "height": 128, "steps": 150, "seed": 4}, timeout=60)
jid = r.json()["id"]
for _ in range(600):
    if S.get(U + "/v1/jobs/" + jid).json()["job"]["state"] == "running":
        break
    time.sleep(0.02)
codes = []


def cancel(j):
    codes.append(requests.delete(U + "/v1/jobs/" + j, timeout=60).status_code)


ths = [threading.Thread(target=cancel, args=(jid,)) for _ in range(24)] + \
      [threading.Thread(target=cancel, args=(JOB,)) for _ in range(8)] + \
      [threading.Thread(target=lambda: codes.append(requests.post(U + "/sdapi/v1/interrupt", timeout=60).status_code)) for _ in range(8)]
for t in ths:
    t.start()
for t in ths:
    t.join()
total[0] += len(codes)
kinds["concurrent_cancel"] = [len(codes), sum(1 for x in codes if x in (200, 202))]
for _ in range(600):
    st = S.get(U + "/v1/jobs/" + jid).json()["job"]["state"]
    if st != "running":
        break
    time.sleep(0.05)
c.ok(st == "cancelled", "concurrently cancelled job ends cancelled (got %s)" % st)
c.ok(S.get(U + "/v1/jobs/" + JOB).json()["job"]["state"] == "done", "cancelling a finished job leaves it done")

# bad credentials against a second server with a key and A1111 basic auth
auth = Server(SDXL, MODEL, work, ["--api-key", "k3y", "--api-auth", "u:p"], name="auth").start()
A = auth.url
BAD_AUTH = [{}, {"Authorization": "Bearer"}, {"Authorization": "Bearer k3"}, {"Authorization": "Bearer k3yy"},
            {"Authorization": "bearer K3Y"}, {"Authorization": "Basic " + base64.b64encode(b"u:q").decode()},
            {"Authorization": "Basic " + base64.b64encode(b"u:").decode()}, {"Authorization": "Basic !!!"},
            {"Authorization": "Basic " + base64.b64encode(b"u:p ").decode()}, {"Authorization": "Digest x"},
            {"Authorization": "k3y"}, {"Authorization": "Bearer " + "k" * 5000}]
for h in BAD_AUTH:
    for p in ("/v1/schedulers", "/sdapi/v1/samplers", "/metrics", "/v1/jobs"):
        total[0] += 1
        r = requests.get(A + p, headers=h, timeout=30)
        k = kinds.setdefault("bad_auth", [0, 0])
        k[0] += 1
        k[1] += r.status_code == 401 and r.headers.get("WWW-Authenticate") is not None
c.ok(requests.get(A + "/v1/schedulers", headers={"Authorization": "Bearer k3y"}).status_code == 200, "right key after bad ones -> 200")
c.ok(auth.stop() == 0, "auth server exits 0")

# repeat the cheap kinds until the suite has its size
rounds = 0
while total[0] < 1300:
    rounds += 1
    for p in BAD_JSON[:10]:
        expect("bad_json_v1", 400, "POST", "/v1/jobs", data=p.encode("latin-1"))
    for f, v in WRONG_TYPES[:10]:
        expect("wrong_type_a1111", 422, "POST", T2I, json={"prompt": "a", f: v})
    for t in TRAVERSAL[:5]:
        expect("traversal_v1_model", 422, "POST", "/v1/jobs", json={"prompt": "a", "model": t})
    expect("unknown_route", 404, "GET", "/nope%d" % rounds)
    expect("wrong_method", 405, "PUT", "/v1/jobs")

# the next valid request is a real generation with a valid PNG
r = S.post(U + T2I, json={"prompt": "after the storm", "width": 64, "height": 64, "steps": 3, "seed": 11}, timeout=300)
ok = r.status_code == 200
if ok:
    w, h, t = png_info(base64.b64decode(r.json()["images"][0]))
    ok = (w, h) == (64, 64) and "Seed: 11" in t.get("parameters", "")
c.ok(ok, "after the suite a txt2img is served with a valid PNG")
for kind, (n, good) in sorted(kinds.items()):
    c.ok(n == good, "%-28s %4d requests, %4d with the exact status" % (kind, n, good))
c.ok(len(kinds) >= 48, "%d kinds (>= 48)" % len(kinds))
c.ok(total[0] >= 1200, "%d requests (>= 1200)" % total[0])
c.ok(srv.alive(), "server alive after the suite")
rc = srv.stop()
c.ok(rc == 0, "server exits 0 on SIGTERM (got %s)" % rc)
print("requests: %d, kinds: %d" % (total[0], len(kinds)))
c.done()
