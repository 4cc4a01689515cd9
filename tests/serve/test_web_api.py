"""The web page's HTTP side, without a browser: the embedded files (content-hash ETag, 304,
Content-Security-Policy, no inline script or style, nothing from another origin, size), and the
/v1 helpers it calls: /v1/tokenize against `sdxl tokenize --json`, /v1/preprocess against
`sdxl preprocess` pixel for pixel, /v1/jobs paging with offset.
usage: test_web_api.py SDXL MODEL"""
import base64
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import time
import zlib

import requests

from srvtest import Checks, Server, workdir

SDXL, MODEL = sys.argv[1], sys.argv[2]
c = Checks("serve_web_api")
work = workdir("serve_web_api")
srv = Server(SDXL, MODEL, work).start()
U = srv.url

# --- the files ---
total = 0
bodies = {}
for path, ctype in (("/", "text/html"), ("/app.js", "text/javascript"), ("/app.css", "text/css"), ("/favicon.svg", "image/svg+xml")):
    r = requests.get(U + path, timeout=30)
    bodies[path] = r.content
    total += len(r.content)
    etag = r.headers.get("ETag", "")
    c.ok(r.status_code == 200 and r.headers["Content-Type"].startswith(ctype), "GET %s -> 200 %s" % (path, r.headers.get("Content-Type")))
    c.ok(etag == '"%s"' % hashlib.sha256(r.content).hexdigest()[:20], "%s ETag is the content's SHA-256 (%s)" % (path, etag))
    c.ok(r.headers.get("Cache-Control") == "no-cache" and r.headers.get("X-Content-Type-Options") == "nosniff",
         "%s Cache-Control: no-cache, nosniff" % path)
    r2 = requests.get(U + path, headers={"If-None-Match": etag}, timeout=30)
    c.ok(r2.status_code == 304 and not r2.content, "%s with If-None-Match -> 304, empty" % path)
    r3 = requests.head(U + path, timeout=30)
    c.ok(r3.status_code == 200 and not r3.content, "HEAD %s -> 200" % path)
c.ok(total < 150 * 1024, "the page is %d bytes in all (< 150 KB)" % total)
csp = requests.get(U + "/", timeout=30).headers.get("Content-Security-Policy", "")
dirs = dict((d.strip().split(" ", 1) + [""])[:2] for d in csp.split(";") if d.strip())
c.ok(dirs.get("default-src") == "'none'" and dirs.get("script-src") == "'self'" and dirs.get("style-src") == "'self'"
     and dirs.get("connect-src") == "'self'" and dirs.get("frame-ancestors") == "'none'" and "unsafe" not in csp,
     "strict CSP: %s" % csp)
html = bodies["/"].decode()
c.ok(not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html) and not re.search(r"\sstyle=", html)
     and not re.search(r"\son[a-z]+=", html), "no inline script, style attribute or event handler in the HTML")
ext = [m for b in bodies.values() for m in re.findall(rb"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", b) if b"w3.org" not in m]
c.ok(not ext, "nothing loaded from another origin %s" % ext[:3])
c.ok(b'src="/app.js"' in bodies["/"] and b'href="/app.css"' in bodies["/"], "the page loads /app.js and /app.css")
c.ok(requests.get(U + "/index.html", timeout=30).status_code == 404, "other paths stay 404")

# --- /v1/tokenize ---
def tokenize(**body):
    r = requests.post(U + "/v1/tokenize", json=body, timeout=30)
    return r.status_code, r.json()


def cli_tokens(prompt):
    out = subprocess.run([SDXL, "tokenize", "--json", prompt], capture_output=True, check=True).stdout
    j = json.loads(out)
    ch = j.get("chunks", {}).get("tokenizer1")
    if not ch:
        return j["n_tokens"], [j["n_tokens"]]
    counts = [sum(1 for t in w["ids"][1:76] if (t["id"] if isinstance(t, dict) else t) != 49407) for w in ch["windows"]]
    return ch["n_tokens"], counts


st, j = tokenize(prompt="a red fox in the snow")
c.ok(st == 200 and j["prompt"]["n_tokens"] == 6 and j["prompt"]["chunks"] == [6] and "negative_prompt" not in j,
     "tokenize: 'a red fox in the snow' -> 6 tokens, one chunk %s" % j)
long = ", ".join("word%d" % i for i in range(60))
for p in (long, "a cat BREAK a dog", "(a cat:1.3) [in a hat], " * 12):
    st, j = tokenize(prompt=p)
    want = cli_tokens(p)
    c.ok(st == 200 and (j["prompt"]["n_tokens"], j["prompt"]["chunks"]) == want,
         "tokenize %r...: %d tokens in chunks %s = sdxl tokenize --json %s" % (p[:24], j["prompt"]["n_tokens"], j["prompt"]["chunks"], want))
st, j = tokenize(prompt="a castle <lora:pixel_art:0.7>", negative_prompt="blurry")
c.ok(st == 200 and j["prompt"]["loras"] == [{"name": "pixel_art", "te_weight": 0.7, "unet_weight": 0.7}]
     and j["prompt"]["n_tokens"] == 2 and j["negative_prompt"]["n_tokens"] == 1, "tokenize: <lora:> tags out, negative counted %s" % j)
st, j = tokenize(prompt="x <lora:a:zz>")
c.ok(st == 422 and j["error"]["field"] == "prompt", "bad lora weight -> 422 naming prompt: %s" % j["error"]["message"])

# --- /v1/preprocess against `sdxl preprocess` ---
def png_pixels(data):
    """(w, h, channels, rows) of an 8-bit non-interlaced PNG (what our encoder writes)."""
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    ch = {0: 1, 2: 3, 6: 4}[ctype]
    raw = zlib.decompress(idat)
    stride, rows, prev = w * ch, [], bytearray(w * ch)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - ch] if i >= ch else 0
            b, cc = prev[i], prev[i - ch] if i >= ch else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                pa, pb, pc = abs(b - cc), abs(a - cc), abs(a + b - 2 * cc)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else cc)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, ch, b"".join(rows)


r = requests.post(U + "/v1/jobs", json={"prompt": "a house with a red roof", "width": 128, "height": 96, "steps": 3, "seed": 5}, timeout=30)
src_id = r.json()["id"]
for _ in range(1200):
    if requests.get(U + "/v1/jobs/" + src_id, timeout=30).json()["job"]["state"] == "done":
        break
    time.sleep(0.05)
src = requests.get(U + "/v1/jobs/%s/images/0" % src_id, timeout=30).content
src_path = os.path.join(work, "src.png")
open(src_path, "wb").write(src)
b64 = base64.b64encode(src).decode()
for spec, args, size, resize in (("canny:60:120", ["canny", "--low", "60", "--high", "120"], (128, 96), "just"),
                                 ("invert", ["invert"], (96, 96), "crop"), ("threshold:100", ["threshold", "--threshold", "100"], (160, 96), "fill"),
                                 ("blur:1.5", ["blur", "--sigma", "1.5"], (128, 96), "just")):
    r = requests.post(U + "/v1/preprocess", json={"image": "data:image/png;base64," + b64, "preprocess": spec,
                                                   "width": size[0], "height": size[1], "resize": resize}, timeout=60)
    ref = os.path.join(work, "ref_%s.png" % spec.split(":")[0])
    subprocess.run([SDXL, "preprocess"] + args + ["--size", "%dx%d" % size, "--resize", resize, src_path, "-o", ref], check=True,
                   capture_output=True)
    got, want = png_pixels(r.content) if r.status_code == 200 else None, png_pixels(open(ref, "rb").read())
    same = got == want
    c.ok(r.status_code == 200 and r.headers["Content-Type"] == "image/png" and same,
         "preprocess %s %dx%d %s = sdxl preprocess, pixel for pixel" % (spec, size[0], size[1], resize))
r = requests.post(U + "/v1/preprocess", json={"image": b64, "preprocess": "canny", "width": 1024, "height": 512, "max_side": 256}, timeout=60)
w, h = png_pixels(r.content)[:2]
c.ok(r.status_code == 200 and (w, h) == (256, 128) and r.headers.get("X-Output-Size") == "1024x512",
     "preprocess preview shrunk to max_side: %dx%d of %s" % (w, h, r.headers.get("X-Output-Size")))

# --- /v1/jobs paging ---
ids = [src_id]
for i in range(4):
    ids.append(requests.post(U + "/v1/jobs", json={"prompt": "page %d" % i, "width": 64, "height": 64, "steps": 2, "seed": i}, timeout=30).json()["id"])
for _ in range(1200):
    if all(requests.get(U + "/v1/jobs/" + x, timeout=30).json()["job"]["state"] == "done" for x in ids):
        break
    time.sleep(0.1)
pages = [requests.get(U + "/v1/jobs?state=done&limit=2&offset=%d" % o, timeout=30).json() for o in (0, 2, 4, 6)]
seen = [j["id"] for p in pages for j in p["jobs"]]
c.ok(seen == ids[::-1] and all(p["matched"] == 5 for p in pages) and pages[3]["jobs"] == [],
     "GET /v1/jobs?state=done&limit=2&offset=0,2,4,6: newest first, no overlap, matched=5")

# --- an --api-key server: the page is public, the helpers are not ---
ksrv = Server(SDXL, MODEL, work, extra=["--api-key", "k3y"], name="keyed").start()
c.ok(requests.get(ksrv.url + "/", timeout=30).status_code == 200, "--api-key: / needs no key")
c.ok(requests.post(ksrv.url + "/v1/tokenize", json={"prompt": "a"}, timeout=30).status_code == 401, "--api-key: /v1/tokenize without the key -> 401")
c.ok(requests.post(ksrv.url + "/v1/tokenize", json={"prompt": "a"}, headers={"Authorization": "Bearer k3y"}, timeout=30).status_code == 200,
     "--api-key: /v1/tokenize with the bearer key -> 200")
c.ok(ksrv.stop() == 0, "keyed server exits 0")
c.ok(srv.stop() == 0, "server exits 0")
c.done()
