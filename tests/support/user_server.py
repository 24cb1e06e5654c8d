#!/usr/bin/env python3
"""A user server for tests, in Python's standard library only. Each configuration's
value is JSON: {"count": N, "interval_ms": M, "reject": bool, "stop_delay_ms": D}.
On /start it posts a running notice and then N events (forever without "count")
carrying {"src", "seq", "id", "timeID"}; it honours 503 + Retry-After and retries
until the event is acknowledged. A /stop takes D ms (default 0), the configuration
running until then, as a server that must drain something would. Every start, stop
(when done) and acknowledged event is appended to --journal as a JSON line, which
is what the tests compare against the sensor."""
import argparse
import base64
import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--processor", required=True, help="processor-client base URL")
parser.add_argument("--journal", required=True)
parser.add_argument("--tls-cert", help="serve HTTPS with this certificate (and --tls-key)")
parser.add_argument("--tls-key")
args = parser.parse_args()

lock = threading.Lock()
running = {}  # src -> threading.Event that stops it


def journal(**entry):
    entry["at"] = time.time()
    with lock:
        with open(args.journal, "a") as f:
            f.write(json.dumps(entry) + "\n")


def post(path, body):
    req = urllib.request.Request(
        args.processor + path, data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, None
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Retry-After")


def emit(data, stop):
    try:
        cfg = json.loads(data["config"])
    except ValueError:
        cfg = {}
    count = cfg.get("count")
    interval = cfg.get("interval_ms", 10) / 1000.0
    while not stop.is_set():
        try:
            if post("/activated", data)[0] < 500:
                break
        except OSError:
            pass
        stop.wait(0.05)
    seq = 0
    while not stop.is_set() and (count is None or seq < count):
        payload = json.dumps({"src": data["src"], "seq": seq, "id": data["id"], "timeID": data["timeID"]})
        body = {"src": data["src"], "payload": base64.b64encode(payload.encode()).decode()}
        while not stop.is_set():
            try:
                status, retry_after = post("/event", body)
            except OSError:
                stop.wait(0.05)
                continue
            if 200 <= status < 300:
                journal(op="acked", src=data["src"], timeID=data["timeID"], seq=seq)
                break
            if status == 503:
                stop.wait(float(retry_after or 1))
                continue
            journal(op="refused", src=data["src"], seq=seq, status=status)
            break
        seq += 1
        stop.wait(interval)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def answer(self, status, text=""):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        data = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        op = self.path.strip("/")
        if op == "stop":
            try:
                delay = json.loads(data.get("config") or "{}").get("stop_delay_ms", 0)
            except (ValueError, AttributeError):
                delay = 0
            time.sleep(delay / 1000.0)
        journal(op=op, auth=self.headers.get("Authorization"), **data)
        if op == "start":
            try:
                cfg = json.loads(data["config"])
            except ValueError:
                cfg = {}
            if isinstance(cfg, dict) and cfg.get("reject"):
                return self.answer(400, "invalid configuration: reject requested")
            stop = threading.Event()
            with lock:
                old = running.pop(data["src"], None)
                running[data["src"]] = stop
            if old:
                old.set()
            threading.Thread(target=emit, args=(data, stop), daemon=True).start()
            return self.answer(200)
        if op == "stop":
            with lock:
                stop = running.pop(data["src"], None)
            if stop:
                stop.set()
            return self.answer(200)
        self.answer(404, "no such path")


server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
server.daemon_threads = True
if args.tls_cert:
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
