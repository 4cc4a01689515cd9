"""The web page at / in a real headless Chromium (Debian's chromium + chromium-driver, W3C WebDriver
over python3-requests): fill the prompt, pick a sampler, submit with Ctrl+Enter, watch progress reach
the last step and the image reach the gallery with its infotext; cancel a second job mid-run; load
settings back from a PNG dropped on the page; an --api-key server asks for the key once. The
accessibility basics are checked in both colour schemes (web_a11y.js). Any console error, uncaught
exception or CSP violation fails the test. Exits 77 (skipped) without chromium.
usage: test_web_browser.py SDXL MODEL
SDXL_WEB_SCREENSHOTS=DIR also writes the docs' screenshots (1280x800, 390x844; during a run, after)."""
import base64
import json
import os
import re
import sys
import time

import requests

from srvtest import Checks, Server, png_info, workdir
import webdriver

if not webdriver.available():
    print("SKIP: %s or %s missing (Debian chromium, chromium-driver)" % (webdriver.CHROMIUM, webdriver.CHROMEDRIVER))
    sys.exit(77)

SDXL, MODEL = sys.argv[1], sys.argv[2]
SHOTS = os.environ.get("SDXL_WEB_SCREENSHOTS")
HERE = os.path.dirname(os.path.abspath(__file__))
A11Y = open(os.path.join(HERE, "web_a11y.js")).read()
c = Checks("serve_web_browser")
work = workdir("serve_web_browser")
# the test models' folder is also the LoRA folder, so the picker lists the tiny LoRAs
srv = Server(SDXL, MODEL, work, extra=["--lora-dir", os.path.dirname(os.path.abspath(MODEL))]).start()
U = srv.url
t_start = time.time()

# Errors the page could hide from the browser log: uncaught exceptions, rejections, CSP violations.
COLLECT = """
window.__errors = [];
addEventListener('error', (e) => window.__errors.push('error: ' + e.message + ' ' + (e.filename || '') + ':' + (e.lineno || '')));
addEventListener('unhandledrejection', (e) => window.__errors.push('unhandled rejection: ' + (e.reason && e.reason.stack || e.reason)));
document.addEventListener('securitypolicyviolation', (e) => window.__errors.push('CSP: ' + e.violatedDirective + ' ' + e.blockedURI));
const ce = console.error;
console.error = (...a) => { window.__errors.push('console.error: ' + a.join(' ')); ce.apply(console, a); };
"""
# Every status text a queue card shows, as it changes (the test's own record of progress).
WATCH = """
window.__status = [];
new MutationObserver(() => {
  for (const li of document.querySelectorAll('#queue li')) {
    const s = li.querySelector('.status').textContent;
    const k = li.dataset.id + ' ' + s;
    if (window.__status[window.__status.length - 1] !== k) window.__status.push(k);
  }
}).observe(document.getElementById('queue'), {subtree: true, childList: true, characterData: true, attributes: true});
"""


def console_errors(b, allow=()):
    errs = []
    for e in b.browser_log():
        if e.get("level") == "SEVERE" and not any(re.search(a, e.get("message", "")) for a in allow):
            errs.append(e["message"])
    errs += b.js("return window.__errors || []")
    return errs


def a11y(b, scheme):
    b.color_scheme(scheme)
    r = b.js(A11Y)
    c.ok(not r["unlabelled"], "%s: every control and image has a name (%s)" % (scheme, r["unlabelled"][:5]))
    c.ok(not r["positive"], "%s: no positive tabindex (%s)" % (scheme, r["positive"][:5]))
    c.ok(not r["low"] and r["checked"] > 50, "%s: %d texts at >= 4.5:1 contrast (lowest %.2f:1, %s)%s" % (
        scheme, r["checked"], r["lowest"], r["lowestWhat"], "" if not r["low"] else "; below: " + "; ".join(r["low"][:6])))
    return r


def focus_order(b, expected):
    """Tabs through the page from the top; the focus must visit the controls in DOM order."""
    b.js("""window.__focus = [];
            document.addEventListener('focusin', (e) => window.__focus.push(e.target.dataset.a11y || e.target.tagName + '#' + e.target.id));
            document.querySelector('[data-a11y="f0"]').focus();""")
    for _ in range(len(expected) - 1):
        b.keys("tab")
    got = b.js("return window.__focus")
    first_bad = next((i for i, (x, y) in enumerate(zip(got, expected)) if x != y), None)
    c.ok(got[:len(expected)] == expected, "Tab visits all %d controls in DOM order%s" % (
        len(expected), "" if first_bad is None else " (differs at %d: got %s, want %s)" % (
            first_bad, got[first_bad:first_bad + 3], expected[first_bad:first_bad + 3])))


def ax_names(b):
    """Chromium's own accessibility tree: every interactive node has a computed name."""
    b.cdp("Accessibility.enable")
    nodes = b.cdp("Accessibility.getFullAXTree")["nodes"]
    roles = {"button", "textbox", "combobox", "spinbutton", "slider", "radio", "checkbox", "link", "searchbox", "listbox",
             "switch", "tab", "menuitem"}
    bad, n = [], 0
    for nd in nodes:
        role = (nd.get("role") or {}).get("value")
        if nd.get("ignored") or role not in roles:
            continue
        n += 1
        if not ((nd.get("name") or {}).get("value") or "").strip():
            bad.append(role + " " + nd.get("nodeId", ""))
    c.ok(n > 30 and not bad, "accessibility tree: %d interactive nodes, all named %s" % (n, bad[:5]))


def shot(b, name, w, h, mobile, scroll=None):
    if not SHOTS:
        return
    b.viewport(w, h, mobile)
    time.sleep(0.3)
    if scroll:
        b.js("document.querySelector(arguments[0]).scrollIntoView({block: 'start'})", scroll)
    else:
        b.js("window.scrollTo(0, 0)")
    time.sleep(0.2)
    path = os.path.join(SHOTS, name)
    n = b.screenshot(path)
    c.ok(n < 200 * 1024, "screenshot %s: %dx%d, %d KB" % (name, w, h, n // 1024))
    b.js("window.scrollTo(0, 0)")


sch = requests.get(U + "/v1/schedulers", timeout=30).json()
sampler = next(s for s in sch["samplers"] if s["a1111"] == "DPM++ 2M" and s["traits"]["implemented"])
if SHOTS:
    os.makedirs(SHOTS, exist_ok=True)
    # a gallery to show: a few earlier images
    for i, p in enumerate(["a lighthouse on a cliff at dusk", "a red fox in the snow", "a bowl of ramen, studio light"]):
        requests.post(U + "/v1/jobs", json={"prompt": p, "width": 64, "height": 64, "steps": 8, "seed": 100 + i}, timeout=30)

b = webdriver.Browser(os.path.join(work, "chromedriver.log"))
try:
    b.viewport(1280, 800)
    b.cdp("Page.enable")
    b.cdp("Page.addScriptToEvaluateOnNewDocument", source=COLLECT)
    b.get(U + "/")
    b.wait("return document.body.dataset.ready === '1'", timeout=60, what="the page to load")
    b.js(WATCH)
    c.ok(b.js("return document.title") == "sdxl", "page loads from the binary (title 'sdxl')")
    opts = b.js("return [...document.querySelectorAll('#sampler option')].map((o) => o.value)")
    c.ok(sampler["name"] in opts and len(opts) >= 10, "sampler list from /v1/schedulers (%d samplers)" % len(opts))

    # --- generate: fill the prompt, pick a sampler, small size, submit with Ctrl+Enter ---
    PROMPT = "a lighthouse on a cliff, (stormy sky:1.2)"
    STEPS, SEED, SIZE = 6, 1234, 64
    BATCH = 1
    if SHOTS:
        STEPS, BATCH = 150, 4  # a run long enough to be photographed
    b.clear("#prompt")
    b.type("#prompt", PROMPT)
    for fid, v in (("width", SIZE), ("height", SIZE), ("steps", STEPS), ("seed", SEED), ("batch_count", BATCH)):
        b.clear("#" + fid)
        b.type("#" + fid, str(v))
    b.click("#sampler option[value='%s']" % sampler["name"])
    c.ok(b.js("return document.getElementById('sampler').value") == sampler["name"], "picked sampler %s" % sampler["a1111"])
    tok = b.wait("const t = document.getElementById('prompt-tokens').textContent; return /\\/75 tokens/.test(t) && t",
                 timeout=20, what="the token counter")
    c.ok(True, "token counter: %s" % tok)
    c.ok(b.js("return document.getElementById('sampler-hint').textContent").startswith("deterministic"),
         "sampler hint shows its traits")
    plan = b.wait("""const d = [...document.querySelectorAll('#plan dt')].map((x) => x.textContent + ': ' + x.nextElementSibling.textContent);
                     return d.some((x) => x.startsWith('Memory') && /estimated/.test(x)) && d.some((x) => x.startsWith('Images: %d of %d × %d')) &&
                       d.some((x) => x.startsWith('Sampler: %s ·')) && d.join(' | ')""" % (BATCH, SIZE, SIZE, sampler["a1111"]),
                  timeout=20, what="the plan")
    c.ok("%d of %d × %d" % (BATCH, SIZE, SIZE) in plan and "Sub-batches" in plan and "Refiner" in plan and "Expected time" in plan,
         "plan before run: %s" % plan)
    # a bad field is marked with the server's field path, then fixed
    b.clear("#steps")
    b.type("#steps", "0")
    msg = b.wait("""const s = document.getElementById('steps');
                    return s.getAttribute('aria-invalid') === 'true' && document.getElementById('steps-err').textContent""",
                 timeout=20, what="steps marked invalid")
    listed = b.js("return document.getElementById('plan-issues').textContent")
    c.ok("must be within" in msg and listed.startswith("steps:"), "steps 0 marked invalid by /v1/validate: %s (listed: %s)" % (msg, listed))
    b.clear("#steps")
    b.type("#steps", str(STEPS))
    b.wait("return !document.getElementById('steps').hasAttribute('aria-invalid')", timeout=20, what="steps valid again")

    b.click("#prompt")
    b.keys("ctrl", "enter")
    jid = b.wait("const li = document.querySelector('#queue li'); return li && li.dataset.id", timeout=20, what="a queued job")
    c.ok(bool(jid), "Ctrl+Enter submitted job %s" % jid)
    if SHOTS:
        b.wait("const li = document.querySelector('#queue li'); return li && li.dataset.phase === 'base' && Number(li.dataset.step) >= 2 && "
               "!li.querySelector('img').hidden", timeout=60, what="a preview")
        shot(b, "web-desktop-run.png", 1280, 800, False)
        shot(b, "web-mobile-run.png", 390, 844, True, scroll="#queue-sec")
        b.viewport(1280, 800)
    b.wait("return document.querySelector('#queue li[data-id=\"%s\"][data-state=\"done\"]')" % jid, timeout=120, what="job done")
    statuses = [s for s in b.js("return window.__status") if s.startswith(jid)]
    end = b.js("const li = document.querySelector('#queue li[data-id=\"%s\"]'); const p = li.querySelector('progress');"
               "return [li.dataset.step, li.dataset.steps, p.value, p.max]" % jid)
    c.ok(end[:2] == [str(STEPS), str(STEPS)] and end[2] == end[3] == STEPS and any("base: step" in s for s in statuses),
         "progress reached step %s of %s, bar full (%d status lines, e.g. '%s')" % (
             end[0], end[1], len(statuses), statuses[len(statuses) // 2] if statuses else None))
    card = b.wait("""const li = document.querySelector('#gallery-list li.card[data-job="%s"]');
                     return li && li.dataset.infotext && li.querySelector('img').naturalWidth > 0 &&
                       {w: li.querySelector('img').naturalWidth, info: li.dataset.infotext, pre: li.querySelector('pre').textContent,
                        first: document.querySelector('#gallery-list li.card').dataset.job, seed: li.dataset.seed}""" % jid,
                  timeout=30, what="the image in the gallery")
    c.ok(card["first"] == jid and card["w"] == SIZE, "image %dpx first in the gallery" % card["w"])
    info = card["info"]
    c.ok(info.startswith(PROMPT) and "Steps: %d" % STEPS in info and "Seed: %d" % SEED in info and "DPM++ 2M" in info
         and card["pre"] == info, "gallery infotext: %s" % info.replace("\n", " | ")[:160])
    api_png = requests.get(U + "/v1/jobs/%s/images/0" % jid, timeout=30).content
    c.ok(png_info(api_png)[2].get("parameters") == info, "infotext equals the PNG's parameters chunk")
    dl = b.js("""const li = document.querySelector('#gallery-list li.card[data-job="%s"]');
                 const a = li.querySelector('a[download]');
                 return {href: a.href, img: li.querySelector('img').src, name: a.download}""" % jid)
    c.ok(dl["href"].startswith("blob:") and dl["href"] == dl["img"] and dl["name"] == "sdxl_%s_0.png" % jid,
         "download link: the fetched PNG itself (%s), metadata intact" % dl["name"])
    if SHOTS:
        b.wait("return document.getElementById('queue-empty').hidden === false", timeout=20, what="queue empty")
        b.js("document.querySelector('#gallery-list details').open = true")
        shot(b, "web-desktop-done.png", 1280, 800, False)
        shot(b, "web-mobile-done.png", 390, 844, True, scroll="#gallery")
        b.viewport(1280, 800)

    # --- accessibility basics in both schemes, Tab order ---
    b.wait("return document.getElementById('queue-empty').hidden === false", timeout=20, what="the queue to empty")
    b.js("for (const d of document.querySelectorAll('details')) d.open = true")
    bg = "return getComputedStyle(document.body).backgroundColor + ' / ' + getComputedStyle(document.body).color"
    light = a11y(b, "light")
    bg_light = b.js(bg)
    dark = a11y(b, "dark")
    bg_dark = b.js(bg)
    b.color_scheme("light")
    c.ok(bg_light != bg_dark, "colours follow prefers-color-scheme: light %s, dark %s" % (bg_light, bg_dark))
    for w in (360, 390, 1280):
        b.viewport(w, 800, w < 800)
        over = b.js("return Math.max(document.documentElement.scrollWidth, window.innerWidth) - arguments[0]", w)
        c.ok(over <= 0, "at %d px wide nothing overflows sideways (%d px)" % (w, over))
    b.viewport(1280, 800)
    ax_names(b)
    focus_order(b, light["expected"])

    # --- a long second job, two short ones queued behind it with their places; the long one cancelled mid-run ---
    def setf(fid, v):
        b.clear("#" + fid)
        b.type("#" + fid, str(v))
    setf("batch_count", 1)
    setf("steps", 150)
    setf("width", 512)
    setf("height", 512)
    b.click("#generate")
    jid2 = b.wait("const li = document.querySelector('#queue li:not([data-id=\"%s\"])'); return li && li.dataset.id" % jid,
                  timeout=20, what="the second job")
    b.wait("""const li = document.querySelector('#queue li[data-id="%s"]');
              return li.dataset.phase === 'base' && Number(li.dataset.step) >= 1""" % jid2, timeout=120, what="the second job to run")
    setf("steps", 4)
    setf("width", 64)
    setf("height", 64)
    b.click("#generate")
    b.wait("return document.querySelectorAll('#queue li:not([data-state=\"done\"])').length === 2", timeout=20, what="a third job")
    b.click("#generate")
    places = b.wait("""const q = [...document.querySelectorAll('#queue li[data-place]')];
                       return q.length === 2 && q.map((li) => li.querySelector('.status').textContent)""",
                    timeout=20, what="two queued jobs with their places")
    c.ok(sorted(places)[0].startswith("Queued: place 1 of 2") and sorted(places)[1].startswith("Queued: place 2 of 2"),
         "queued jobs show their places: %s" % places)
    step = b.js("return Number(document.querySelector('#queue li[data-id=\"%s\"]').dataset.step)" % jid2)
    b.click("#queue li[data-id='%s'] button" % jid2)
    b.wait("return document.querySelector('#queue li[data-id=\"%s\"][data-state=\"cancelled\"]')" % jid2, timeout=60,
           what="cancelled")
    st = b.js("return document.querySelector('#queue li[data-id=\"%s\"] .status').textContent" % jid2)
    j2 = requests.get(U + "/v1/jobs/" + jid2, timeout=30).json()["job"]
    c.ok(j2["state"] == "cancelled" and st.startswith("Cancelled"),
         "second job cancelled mid-run (at step %d+ of 150): API state %s, card '%s'" % (step, j2["state"], st))
    b.wait("return document.querySelectorAll('#queue li[data-state=\"done\"]').length === 2", timeout=120,
           what="the two queued jobs to finish")
    c.ok(True, "the two queued jobs ran after the cancel")
    setf("steps", STEPS)
    setf("width", SIZE)
    setf("height", SIZE)
    setf("batch_count", 1)

    # --- drop a PNG with metadata on the page: its settings come back ---
    b.clear("#prompt")
    b.type("#prompt", "something else entirely")
    b.clear("#seed")
    b.type("#seed", "7")
    b.js("document.getElementById('sampler').selectedIndex = 0")
    b.js("""const bytes = Uint8Array.from(atob(arguments[0]), (ch) => ch.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
            const t = document.querySelector('#gallery-h');
            for (const type of ['dragenter', 'dragover', 'drop'])
              t.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));""",
         base64.b64encode(api_png).decode())
    got = b.wait("""const m = document.getElementById('form-msg').textContent;
                    return /Settings loaded/.test(m) && {prompt: document.getElementById('prompt').value, seed: document.getElementById('seed').value,
                      steps: document.getElementById('steps').value, sampler: document.getElementById('sampler').value,
                      w: document.getElementById('width').value}""", timeout=20, what="settings from the dropped PNG")
    c.ok(got["prompt"] == PROMPT and got["seed"] == str(SEED) and got["steps"] == str(STEPS) and got["sampler"] == sampler["name"]
         and got["w"] == str(SIZE), "dropped PNG loaded its settings: %s" % json.dumps(got))
    c.ok(b.js("return document.getElementById('drop-overlay').hidden"), "drop overlay gone after the drop")

    # --- send to img2img: the plan then starts later ---
    b.click("#gallery-list li.card[data-job='%s'] .buttons button" % jid)
    p2 = b.wait("""const d = [...document.querySelectorAll('#plan dt')].map((x) => x.textContent + ': ' + x.nextElementSibling.textContent).join(' | ');
                   return document.getElementById('mode-img2img').checked && /Image to image: starts at step/.test(d) && d""",
                timeout=20, what="an img2img plan")
    c.ok(True, "send to img2img: %s" % p2)

    # --- inpaint: paint a mask with the pointer, run it ---
    b.click("#mode-inpaint")
    cv = b.find("#init-canvas")
    b._call("POST", b.s + "/actions", {"actions": [{"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": [
        {"type": "pointerMove", "origin": {webdriver.ELEMENT: cv}, "x": -10, "y": 0}, {"type": "pointerDown", "button": 0},
        {"type": "pointerMove", "origin": {webdriver.ELEMENT: cv}, "x": 10, "y": 0, "duration": 100}, {"type": "pointerUp", "button": 0}]}]})
    b._call("DELETE", b.s + "/actions")
    tint = b.js("const c = document.getElementById('init-canvas'); const g = c.getContext('2d');"
                "const a = g.getImageData(c.width / 2, c.height / 2, 1, 1).data; return [a[0], a[1], a[2]]")
    before = b.js("return [...document.querySelectorAll('#queue li')].map((li) => li.dataset.id)")
    b.click("#generate")
    jid3 = b.wait("const li = [...document.querySelectorAll('#queue li')].find((li) => !arguments[0].includes(li.dataset.id));"
                  "return li && li.dataset.id", timeout=20, what="the inpaint job", args=[before])
    b.wait("return document.querySelector('#queue li[data-id=\"%s\"][data-state=\"done\"]')" % jid3, timeout=120, what="inpaint done")
    req = json.loads(png_info(requests.get(U + "/v1/jobs/%s/images/0" % jid3, timeout=30).content)[2]["sdxl"])
    c.ok(req.get("mask_blur") is not None and "strength" in req, "inpaint with a painted mask ran (mask tint at the centre %s; request has strength %s, mask_blur %s)" % (
        tint, req.get("strength"), req.get("mask_blur")))
    b.click("#mode-txt2img")

    # --- LoRA picker: the plan resolves the file ---
    b.js("document.getElementById('lora-sec').open = true")
    b.click("#lora-add")
    name = b.js("const s = document.querySelector('#lora-list select'); const o = [...s.options].find((x) => /lora_kohya/.test(x.value));"
                "s.value = o.value; s.dispatchEvent(new Event('change')); return o.value")
    b.clear("#lora-list input")
    b.type("#lora-list input", "0.5")
    lp = b.wait("""const d = [...document.querySelectorAll('#plan dt')].map((x) => x.textContent + ': ' + x.nextElementSibling.textContent);
                   return d.find((x) => x.startsWith('LoRA: ') && x.includes(arguments[0]))""", timeout=20, what="a LoRA plan", args=[name])
    c.ok(True, "LoRA picker: %s -> plan %s" % (name, lp))
    b.click("#lora-list button")

    # --- ControlNet unit: the preprocessed preview of a picked image ---
    b.js("document.getElementById('cn-sec').open = true")
    b.click("#cn-add")
    src_png = os.path.join(work, "control.png")
    open(src_png, "wb").write(api_png)
    b.type("#cn-list input[type=file]", src_png)
    pv = b.wait("const i = document.querySelector('#cn-list img[id$=\"-pre\"]'); return i && !i.hidden && i.complete && i.naturalWidth > 0 && [i.naturalWidth, i.naturalHeight]",
                timeout=30, what="the ControlNet preview")
    bad = b.wait("const e = document.querySelector('#cn-list [aria-invalid=\"true\"]'); return e && e.id + ': ' + (document.getElementById(e.id + '-err') || {}).textContent",
                 timeout=20, what="the unit's model marked")
    c.ok(pv[0] > 0, "ControlNet unit: canny preview %dx%d from /v1/preprocess; without a ControlNet file the unit is marked (%s)" % (pv[0], pv[1], bad))
    b.click("#cn-list .buttons button")

    errs = console_errors(b)
    c.ok(not errs, "no console errors, exceptions or CSP violations (%s)" % errs[:5])
finally:
    b.close()

# --- --api-key: the page asks once, then sends it as a bearer token ---
ksrv = Server(SDXL, MODEL, work, extra=["--api-key", "s3cret-key"], name="keyed").start()
b = webdriver.Browser(os.path.join(work, "chromedriver2.log"))
try:
    b.cdp("Page.enable")
    b.cdp("Page.addScriptToEvaluateOnNewDocument", source=COLLECT)
    b.get(ksrv.url + "/")
    b.wait("return document.getElementById('key-dialog').open", timeout=60, what="the key dialog")
    b.type("#key-input", "s3cret-key")
    b.keys("enter")
    b.wait("return document.body.dataset.ready === '1' && document.querySelectorAll('#sampler option').length > 5",
           timeout=60, what="the page with the key")
    n401 = sum(1 for line in open(ksrv.log_path, errors="replace") if '"status":401' in line)
    c.ok(not b.js("return document.getElementById('key-dialog').open") and 1 <= n401 <= 8,
         "--api-key: asked once, then every call carries the bearer key (%d calls answered 401 before)" % n401)
    errs = console_errors(b, allow=[r"status of 401"])
    c.ok(not errs, "no console errors besides the 401s before the key (%s)" % errs[:5])
finally:
    b.close()
    ksrv.stop()

c.ok(srv.stop() == 0, "server exits 0")
print("took %.1f s" % (time.time() - t_start))
c.done()
