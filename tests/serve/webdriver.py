"""A small W3C WebDriver client over python3-requests for Debian's chromium + chromium-driver, with
chromedriver's DevTools passthrough (goog/cdp/execute) and browser log (se/log)."""
import base64
import os
import shutil
import socket
import subprocess
import tempfile
import time

import requests

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
KEYS = {"ctrl": "\ue009", "enter": "\ue007", "tab": "\ue004", "shift": "\ue008"}


def available():
    return os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class WebDriverError(RuntimeError):
    pass


class Browser:
    """Headless Chromium driven by chromedriver on a loopback port."""

    def __init__(self, log_path, width=1280, height=800):
        self.port = free_port()
        self.log = open(log_path, "ab")
        self.profile = tempfile.mkdtemp(prefix="sdxl_chromium_")
        self.proc = subprocess.Popen([CHROMEDRIVER, "--port=%d" % self.port], stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        self.base = "http://127.0.0.1:%d" % self.port
        self.http = requests.Session()
        t0 = time.time()
        while True:
            try:
                if self.http.get(self.base + "/status", timeout=2).json()["value"]["ready"]:
                    break
            except (requests.RequestException, ValueError, KeyError):
                pass
            if self.proc.poll() is not None or time.time() - t0 > 30:
                raise WebDriverError("chromedriver did not start")
            time.sleep(0.05)
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars", "--force-color-profile=srgb",
                "--lang=en-US", "--window-size=%d,%d" % (width, height), "--user-data-dir=" + self.profile]
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"}}}}
        v = self._call("POST", "/session", caps, timeout=90)
        self.sid = v["sessionId"]
        self.s = "/session/" + self.sid

    def _call(self, method, path, body=None, timeout=60):
        r = self.http.request(method, self.base + path, json=body, timeout=timeout)
        try:
            v = r.json()["value"]
        except (ValueError, KeyError):
            raise WebDriverError("%s %s -> %d %s" % (method, path, r.status_code, r.text[:300]))
        if r.status_code != 200:
            raise WebDriverError("%s %s: %s" % (method, path, v.get("message", v) if isinstance(v, dict) else v))
        return v

    def get(self, url):
        self._call("POST", self.s + "/url", {"url": url})

    def js(self, script, *args):
        """Runs script (a function body) in the page; returns its value."""
        return self._call("POST", self.s + "/execute/sync", {"script": script, "args": list(args)})

    def js_async(self, script, *args, timeout=60):
        """script's last argument is the callback."""
        return self._call("POST", self.s + "/execute/async", {"script": script, "args": list(args)}, timeout=timeout)

    def cdp(self, cmd, **params):
        return self._call("POST", self.s + "/goog/cdp/execute", {"cmd": cmd, "params": params})

    def find(self, css):
        return self._call("POST", self.s + "/element", {"using": "css selector", "value": css})[ELEMENT]

    def click(self, css):
        self._call("POST", self.s + "/element/%s/click" % self.find(css), {})

    def clear(self, css):
        self._call("POST", self.s + "/element/%s/clear" % self.find(css), {})

    def type(self, css, text):
        self._call("POST", self.s + "/element/%s/value" % self.find(css), {"text": text})

    def keys(self, *seq):
        """Presses keys together: keys("ctrl", "enter") holds Ctrl while pressing Enter."""
        codes = [KEYS.get(k, k) for k in seq]
        acts = [{"type": "keyDown", "value": c} for c in codes] + [{"type": "keyUp", "value": c} for c in reversed(codes)]
        self._call("POST", self.s + "/actions", {"actions": [{"type": "key", "id": "keyboard", "actions": acts}]})
        self._call("DELETE", self.s + "/actions")

    def wait(self, script, timeout=30, what="condition", args=()):
        """Polls script (returns a truthy value when done) every 50 ms; returns that value."""
        t0 = time.time()
        while True:
            v = self.js(script, *args)
            if v:
                return v
            if time.time() - t0 > timeout:
                raise WebDriverError("timed out after %gs waiting for %s" % (timeout, what))
            time.sleep(0.05)

    def viewport(self, width, height, mobile=False):
        self.cdp("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=mobile)

    def color_scheme(self, scheme):
        self.cdp("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": scheme}])

    def screenshot(self, path):
        png = base64.b64decode(self._call("GET", self.s + "/screenshot"))
        with open(path, "wb") as f:
            f.write(png)
        return len(png)

    def browser_log(self):
        return self._call("POST", self.s + "/se/log", {"type": "browser"})

    def close(self):
        try:
            self._call("DELETE", self.s, timeout=30)
        except (WebDriverError, requests.RequestException, AttributeError):
            pass
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)
