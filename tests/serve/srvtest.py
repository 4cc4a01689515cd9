"""Shared helpers of the `sdxl serve` tests: start a server on a loopback port, checks that count,
and a small PNG reader (size and text chunks) so no imaging library is needed."""
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib

import requests


class Checks:
    def __init__(self, name):
        self.name, self.passed, self.failed = name, 0, 0

    def ok(self, cond, what):
        if cond:
            self.passed += 1
            print("ok:", what, flush=True)
        else:
            self.failed += 1
            print("FAIL:", what, flush=True)
        return cond

    def done(self):
        print("%s: %d passed, %d failed" % (self.name, self.passed, self.failed), flush=True)
        sys.exit(1 if self.failed else 0)


class Server:
    """`sdxl serve` on 127.0.0.1 with a port the kernel picks; stderr (access log) goes to a file."""

    def __init__(self, sdxl, model, work, extra=(), name="server"):
        self.sdxl, self.model, self.work, self.extra, self.name = sdxl, model, work, list(extra), name
        os.makedirs(work, exist_ok=True)
        self.port_file = os.path.join(work, name + ".port")
        self.log_path = os.path.join(work, name + ".log")
        self.proc = None

    def start(self, timeout=60):
        if os.path.exists(self.port_file):
            os.unlink(self.port_file)
        cmd = [self.sdxl, "serve", "-m", self.model, "--listen", "127.0.0.1:0", "--port-file", self.port_file,
               "-o", os.path.join(self.work, self.name + "_out"), "-t", "1"] + self.extra
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        t0 = time.time()
        while not os.path.exists(self.port_file):
            if self.proc.poll() is not None:
                raise RuntimeError("server exited %d: %s" % (self.proc.returncode, self.tail()))
            if time.time() - t0 > timeout:
                raise RuntimeError("server did not start: " + self.tail())
            time.sleep(0.05)
        self.port = int(open(self.port_file).read())
        self.url = "http://127.0.0.1:%d" % self.port
        return self

    def tail(self, n=2000):
        try:
            return open(self.log_path, "rb").read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=120):
        """Sends sig; returns the exit code (or -9 after a kill -9)."""
        if not self.alive():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.log.close()
        return rc

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()


def png_info(data):
    """(width, height, {keyword: text}) of a PNG, reading tEXt/zTXt/iTXt; raises on a bad file."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, texts, size, idat = 8, {}, None, 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        crc = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]
        if zlib.crc32(kind + body) & 0xffffffff != crc:
            raise ValueError("bad CRC in " + kind.decode())
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"tEXt":
            k, v = body.split(b"\0", 1)
            texts[k.decode("latin-1")] = v.decode("latin-1")
        elif kind == b"zTXt":
            k, v = body.split(b"\0", 1)
            texts[k.decode("latin-1")] = zlib.decompress(v[1:]).decode("latin-1")
        elif kind == b"iTXt":
            k, rest = body.split(b"\0", 1)
            comp, rest = rest[0], rest[2:]
            _lang, rest = rest.split(b"\0", 1)
            _tk, v = rest.split(b"\0", 1)
            texts[k.decode("latin-1")] = (zlib.decompress(v) if comp else v).decode("utf-8")
        elif kind == b"IDAT":
            idat += n
        elif kind == b"IEND":
            break
        pos += 12 + n
    if not size or not idat:
        raise ValueError("PNG without IHDR or IDAT")
    # the pixels decompress: the image data stream is complete
    return size[0], size[1], texts


def sse_events(resp):
    """Yields (id, event, data) from a streaming requests response."""
    ev = {"id": None, "event": "message", "data": []}
    for raw in resp.iter_lines(decode_unicode=True):
        if raw is None:
            continue
        if raw == "":
            if ev["data"]:
                yield ev["id"], ev["event"], "\n".join(ev["data"])
            ev = {"id": None, "event": "message", "data": []}
            continue
        if raw.startswith(":"):
            continue
        k, _, v = raw.partition(":")
        v = v[1:] if v.startswith(" ") else v
        if k == "data":
            ev["data"].append(v)
        elif k in ("id", "event"):
            ev[k] = v


def workdir(name):
    base = os.environ.get("SDXL_SERVE_WORK")
    if base:
        d = os.path.join(base, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d
    return tempfile.mkdtemp(prefix="sdxl_" + name + "_")
