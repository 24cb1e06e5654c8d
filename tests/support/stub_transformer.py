#!/usr/bin/env python3
"""A transformer written by someone else, for compatibility tests of the
processor-client: it knows only the contract's `POST /` (and /healthz, /readyz).
Each request is appended to --out as a JSON line {"path", "body"}. Every `POST /`
is answered 200 {"id": "stub-N"}. With --offer-batch it also sends the header
by which our transformer offers batches, but still has no /batch endpoint (404):
a processor-client must then fall back to single events."""
import argparse
import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--out", required=True)
parser.add_argument("--offer-batch", action="store_true")
args = parser.parse_args()
lock = threading.Lock()
ids = itertools.count(1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def answer(self, status, body, offer=False):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if offer:
            self.send_header("x-gateway-batch-max-bytes", "1048576")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path in ("/healthz", "/readyz"):
            return self.answer(200, {"status": "ok"})
        self.answer(404, {"error": "not_found", "detail": self.path})

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        with lock:
            n = next(ids)
            with open(args.out, "a") as f:
                f.write(json.dumps({"path": self.path, "body": body}) + "\n")
        if self.path != "/":
            return self.answer(404, {"error": "not_found", "detail": self.path})
        self.answer(200, {"id": f"stub-{n}"}, offer=args.offer_batch)


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
