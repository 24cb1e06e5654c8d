#!/usr/bin/env python3
"""A sensor for tests and the local demo: receives CloudEvents over HTTP, parses
each one with the official CloudEvents SDK, and appends it as one JSON line to
--out (or prints it with --print). While the file named by --fail-file exists it
answers 500 instead, so tests can take it "down" without closing the port.
Paths starting /refuse answer 422 with a body; under /busy each event's first
delivery is answered 503 with Retry-After: 30."""
import argparse
import base64
import json
import os
import time
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.core.bindings.http import HTTPMessage, from_http_event

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--out")
parser.add_argument("--print", action="store_true", dest="print_events")
parser.add_argument("--fail-file")
parser.add_argument("--hold-file", help="while this file exists, hold each request unanswered")
parser.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
parser.add_argument("--tls-key", help="and this private key (PEM)")
args = parser.parse_args()
lock = threading.Lock()
busy_seen = set()


def record(line):
    with lock:
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(line) + "\n")
        if args.print_events:
            print(json.dumps(line, indent=2), flush=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def answer(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        while args.hold_file and os.path.exists(args.hold_file):
            time.sleep(0.01)
        if args.fail_file and os.path.exists(args.fail_file):
            return self.answer(500, b"sensor failing on purpose")
        headers = {k.lower(): v for k, v in self.headers.items()}
        if self.path.startswith("/refuse"):
            return self.answer(422, b"refused on purpose")
        if self.path.startswith("/busy"):
            with lock:
                first = headers.get("ce-id") not in busy_seen
                busy_seen.add(headers.get("ce-id"))
            if first:
                self.send_response(503)
                self.send_header("Retry-After", "30")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        try:
            event = from_http_event(HTTPMessage(headers=headers, body=body))
        except Exception as e:  # noqa: BLE001 - any parse failure is the gateway's bug
            record({"error": str(e), "headers": headers})
            return self.answer(400, str(e).encode())
        data = event.get_data()
        if isinstance(data, (bytes, bytearray)):
            data = {"base64": base64.b64encode(data).decode()}
        # Not `time`: that name would be local to the whole function, and the
        # hold loop above would fail on it with UnboundLocalError.
        sent_at = event.get_time()
        record({
            "id": event.get_id(),
            "source": event.get_source(),
            "type": event.get_type(),
            "specversion": event.get_specversion(),
            "subject": event.get_subject(),
            "time": sent_at.isoformat() if sent_at else None,
            "datacontenttype": event.get_datacontenttype(),
            "traceparent": headers.get("traceparent"),
            "originid": event.get_extension("originid"),
            "path": self.path,
            "received_at": time.time(),
            "extensions": {k: str(v) for k, v in event.get_attributes().items()
                           if k not in ("id", "source", "type", "specversion", "subject", "time",
                                        "datacontenttype", "dataschema")},
            "via": headers.get("via"),
            "mode": "structured" if headers.get("content-type", "").startswith("application/cloudevents+json") else "binary",
            "data": data,
        })
        self.answer(200)


server = ThreadingHTTPServer((args.host, args.port), Handler)
server.daemon_threads = True
if args.tls_cert:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
print(f"sensor listening on {args.port}", file=sys.stderr, flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    pass
