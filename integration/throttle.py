#!/usr/bin/env python3
"""throttle.py: a throttling HTTP proxy on 127.0.0.1 in front of a registry.

A slow link made on loopback for the end-to-end tests and the benchmark of
lazy mounts: every request forwarded to UPSTREAM waits LATENCY seconds
first, and the response bodies of all connections together flow at most
RATE bytes a second (one shared token bucket). The proxy counts what it
serves (requests and body bytes, in total and per path) and can misbehave
on purpose:

  stop_after=N    serve N more body bytes, then stop: the response under way
                  is cut and every later request has its connection closed
                  unanswered, as a registry that dies mid-way (resume=1
                  serves again)
  corrupt=DIGEST  flip one byte in the middle of every response body of the
                  blob DIGEST (its length unchanged)
  slow=DIGEST     serve the blob DIGEST at slow_rate bytes a second, apart
                  from the shared bucket, so other blobs flow meanwhile

Control (never throttled, delayed, counted or stopped), under /_throttle/:
  stats           JSON: requests, bytes, cut, refused, per path and per
                  digest {requests, bytes}, the settings and faults
  log             one JSON object a line per request served: t0, t1
                  (seconds since start), method, path, range, status, bytes
  reset           zero the counters and the log
  set?K=V&...     change rate, latency, stop_after, corrupt, slow,
                  slow_rate, resume (an empty value clears a fault)

The proxy lives at most --lifetime seconds (default 900), then exits.

  throttle.py --upstream 127.0.0.1:5000 --port-file F [--rate 10M]
              [--latency 0.02] [--log FILE] [--lifetime S] [--stop-after N]
              [--corrupt sha256:HEX] [--slow sha256:HEX --slow-rate 20k]
"""

import argparse
import http.client
import json
import os
import re
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 16 << 10
HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "proxy-connection",
}
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def size_arg(s):
    """10M, 512k, 1.5M, 1000 -> bytes (k = 1000, K = 1024, likewise M/m, G/g)."""
    s = str(s).strip()
    if not s:
        return 0
    mult = {"k": 1000, "K": 1024, "m": 10**6, "M": 1 << 20, "g": 10**9, "G": 1 << 30}
    if s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    return int(float(s))


class Bucket:
    """A token bucket that may go into debt: a taker reserves its bytes at
    once and sleeps until the bucket has paid them, so concurrent takers
    share the rate and the total never exceeds it by more than the burst."""

    def __init__(self, rate):
        self.lock = threading.Lock()
        self.rate = 0
        self.tokens = 0.0
        self.t = time.monotonic()
        self.set_rate(rate)

    def set_rate(self, rate):
        with self.lock:
            self.rate = max(0, int(rate))
            self.burst = max(CHUNK, self.rate // 50)  # 20 ms worth
            self.tokens = min(self.tokens, self.burst)
            self.t = time.monotonic()

    def take(self, n):
        with self.lock:
            if self.rate <= 0:
                return
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
            self.t = now
            self.tokens -= n
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class State:
    def __init__(self, args):
        self.lock = threading.Lock()
        self.start = time.monotonic()
        self.upstream = args.upstream
        self.bucket = Bucket(size_arg(args.rate))
        self.latency = float(args.latency)
        self.stop_left = None if args.stop_after is None else size_arg(args.stop_after)
        self.stopped = False
        self.corrupt = args.corrupt or None
        self.slow = args.slow or None
        self.slow_bucket = Bucket(size_arg(args.slow_rate))
        self.logfile = open(args.log, "a", buffering=1) if args.log else None
        self.reset()

    def reset(self):
        with self.lock:
            self.requests = 0
            self.bytes = 0
            self.cut = 0
            self.refused = 0
            self.by_path = {}
            self.by_digest = {}
            self.log = []

    def settings(self):
        return {
            "upstream": self.upstream,
            "rate": self.bucket.rate,
            "latency": self.latency,
            "stop_after_left": self.stop_left,
            "stopped": self.stopped,
            "corrupt": self.corrupt,
            "slow": self.slow,
            "slow_rate": self.slow_bucket.rate,
        }

    def stats(self):
        with self.lock:
            return {
                "requests": self.requests,
                "bytes": self.bytes,
                "cut": self.cut,
                "refused": self.refused,
                "uptime": round(time.monotonic() - self.start, 3),
                "by_path": {k: dict(v) for k, v in self.by_path.items()},
                "by_digest": {k: dict(v) for k, v in self.by_digest.items()},
                **self.settings(),
            }

    def counted(self, path, n):
        """Counts `n` body bytes of `path`."""
        d = DIGEST.search(path)
        with self.lock:
            self.bytes += n
            self.by_path.setdefault(path, {"requests": 0, "bytes": 0})["bytes"] += n
            if d:
                self.by_digest.setdefault(d.group(0), {"requests": 0, "bytes": 0})["bytes"] += n

    def request(self, path):
        d = DIGEST.search(path)
        with self.lock:
            self.requests += 1
            self.by_path.setdefault(path, {"requests": 0, "bytes": 0})["requests"] += 1
            if d:
                self.by_digest.setdefault(d.group(0), {"requests": 0, "bytes": 0})["requests"] += 1

    def allowance(self, n):
        """How many of `n` bytes may still go out before the stop fault."""
        with self.lock:
            if self.stopped:
                return 0
            if self.stop_left is None:
                return n
            k = min(n, self.stop_left)
            self.stop_left -= k
            if self.stop_left <= 0 and k < n:
                self.stopped = True
            elif self.stop_left <= 0:
                # the budget is spent: the next byte stops the registry
                self.stop_left = 0
            return k

    def record(self, entry):
        with self.lock:
            self.log.append(entry)
        if self.logfile:
            self.logfile.write(json.dumps(entry) + "\n")


STATE = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ocix-throttle"
    up = None

    def log_message(self, *args):  # quiet; the request log is in STATE
        pass

    def setup(self):
        super().setup()
        # headers and body go out as separate writes: without this, Nagle's
        # algorithm holds the body until the client's delayed ACK of the
        # headers (40 ms on Linux), a delay no registry adds (Go's sockets
        # are TCP_NODELAY); the only latency is the one --latency sets
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self):
        self.handle_any()

    do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = do_GET

    # control ---------------------------------------------------------------
    def control(self, url):
        q = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        what = url.path[len("/_throttle/"):]
        if what == "stats":
            return self.reply(200, json.dumps(STATE.stats(), indent=1, sort_keys=True) + "\n")
        if what == "log":
            with STATE.lock:
                lines = [json.dumps(e) for e in STATE.log]
            return self.reply(200, "".join(l + "\n" for l in lines))
        if what == "reset":
            STATE.reset()
            return self.reply(200, "reset\n")
        if what == "set":
            try:
                with STATE.lock:
                    if "latency" in q:
                        STATE.latency = float(q["latency"] or 0)
                    if "stop_after" in q:
                        STATE.stop_left = size_arg(q["stop_after"]) if q["stop_after"] != "" else None
                        STATE.stopped = False
                    if q.get("resume"):
                        STATE.stopped = False
                        STATE.stop_left = None
                    for k in ("corrupt", "slow"):
                        if k in q:
                            v = q[k] or None
                            if v is not None and not DIGEST.fullmatch(v):
                                raise ValueError(f"{k}: expected sha256:<64 hex>, got {v!r}")
                            setattr(STATE, k, v)
                if "rate" in q:
                    STATE.bucket.set_rate(size_arg(q["rate"]))
                if "slow_rate" in q:
                    STATE.slow_bucket.set_rate(size_arg(q["slow_rate"]))
            except ValueError as e:
                return self.reply(400, f"{e}\n")
            return self.reply(200, json.dumps(STATE.settings(), sort_keys=True) + "\n")
        return self.reply(404, "unknown control path\n")

    def reply(self, code, text):
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # proxy -----------------------------------------------------------------
    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else None

    def upstream(self):
        if self.up is None:
            host, port = STATE.upstream.rsplit(":", 1)
            self.up = http.client.HTTPConnection(host, int(port), timeout=120)
        return self.up

    def forward(self, body):
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        for attempt in (0, 1):
            try:
                c = self.upstream()
                c.request(self.command, self.path, body=body, headers=headers)
                return c.getresponse()
            except (http.client.HTTPException, OSError):
                # a kept-alive upstream connection closed meanwhile: once more
                if self.up is not None:
                    self.up.close()
                self.up = None
                if attempt:
                    raise

    def cut_connection(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def handle_any(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path.startswith("/_throttle/"):
            return self.control(url)
        t0 = time.monotonic() - STATE.start
        body = self.read_body()
        STATE.request(url.path)
        if STATE.stopped:
            with STATE.lock:
                STATE.refused += 1
            STATE.record({"t0": round(t0, 4), "t1": round(t0, 4), "method": self.command, "path": url.path,
                          "range": self.headers.get("Range"), "status": 0, "bytes": 0, "refused": True})
            return self.cut_connection()
        if STATE.latency > 0:
            time.sleep(STATE.latency)
        try:
            resp = self.forward(body)
        except (http.client.HTTPException, OSError) as e:
            return self.reply(502, f"throttle: upstream {STATE.upstream}: {e}\n")
        digest = DIGEST.search(url.path)
        digest = digest.group(0) if digest else None
        blob = "/blobs/" in url.path
        corrupt = blob and digest is not None and digest == STATE.corrupt
        slow = blob and digest is not None and digest == STATE.slow
        length = resp.getheader("Content-Length")
        data = None
        if length is None and self.command != "HEAD":
            data = resp.read()  # not streamed upstream: served whole
            length = str(len(data))
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        if length is not None:
            self.send_header("Content-Length", length)
        self.end_headers()
        sent = 0
        cut = False
        total = int(length or 0)
        if self.command != "HEAD" and resp.status != 304 and total:
            middle = total // 2
            bucket = STATE.slow_bucket if slow else STATE.bucket
            while sent < total:
                chunk = data[sent:sent + CHUNK] if data is not None else resp.read(min(CHUNK, total - sent))
                if not chunk:
                    cut = True  # the upstream ended early
                    break
                if corrupt and sent <= middle < sent + len(chunk):
                    b = bytearray(chunk)
                    b[middle - sent] ^= 0xFF
                    chunk = bytes(b)
                bucket.take(len(chunk))
                k = STATE.allowance(len(chunk))
                try:
                    if k:
                        self.wfile.write(chunk[:k])
                except OSError:
                    cut = True
                    break
                sent += k
                STATE.counted(url.path, k)
                if k < len(chunk):
                    cut = True
                    break
        else:
            resp.read()
        t1 = time.monotonic() - STATE.start
        STATE.record({"t0": round(t0, 4), "t1": round(t1, 4), "method": self.command, "path": url.path,
                      "range": self.headers.get("Range"), "status": resp.status, "bytes": sent,
                      **({"cut": True} if cut else {})})
        if cut:
            with STATE.lock:
                STATE.cut += 1
            if self.up is not None:
                self.up.close()
                self.up = None
            self.cut_connection()

    def finish(self):
        if self.up is not None:
            self.up.close()
        super().finish()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main():
    global STATE
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", required=True, help="HOST:PORT of the registry")
    p.add_argument("--listen", type=int, default=0, help="port on 127.0.0.1 (0: any free one)")
    p.add_argument("--port-file", help="write the port here once listening")
    p.add_argument("--rate", default="0", help="bytes a second for all bodies together (0: unlimited)")
    p.add_argument("--latency", default="0", help="seconds added to every request")
    p.add_argument("--lifetime", type=float, default=900, help="exit after this many seconds")
    p.add_argument("--log", help="also append the request log to this file")
    p.add_argument("--stop-after", help="stop serving after this many body bytes")
    p.add_argument("--corrupt", help="sha256:HEX of a blob to serve with one byte wrong")
    p.add_argument("--slow", help="sha256:HEX of a blob to serve at --slow-rate")
    p.add_argument("--slow-rate", default="20k", help="bytes a second for the slow blob")
    args = p.parse_args()
    STATE = State(args)
    srv = Server(("127.0.0.1", args.listen), Handler)
    port = srv.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, args.port_file)
    print(f"throttle: 127.0.0.1:{port} -> {args.upstream}, rate {STATE.bucket.rate} B/s, "
          f"latency {STATE.latency} s, lifetime {args.lifetime} s", file=sys.stderr, flush=True)

    def bounded():
        time.sleep(args.lifetime)
        print("throttle: lifetime over, exiting", file=sys.stderr, flush=True)
        os._exit(0)

    threading.Thread(target=bounded, daemon=True).start()
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
