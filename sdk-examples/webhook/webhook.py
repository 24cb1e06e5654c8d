#!/usr/bin/env python3
"""The seeds' webhook gateway as a user server, in Python's standard library.

Each configuration names a port, an endpoint and a method (JSON, or Argo's flat
YAML such as `port: "12000"` / `endpoint: "/bar"` / `method: "POST"`). Every
matching request becomes an event carrying its method, path, headers and body;
the caller is answered 200 once the gateway has the event, 503 (with Retry-After)
when the gateway cannot take it now. A wrong method gets 405, an unknown path
404. Configurations may share a port; stopping the last one on a port closes it.

A request's `Idempotency-Key` header (or `X-Request-Id`) becomes the event's
`id`: a sender that retries after a lost answer is answered 200 again, and the
gateway delivers the event once.
"""
import base64
import json
import os
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CLIENT = "http://127.0.0.1:" + os.environ.get("GATEWAY_PROCESSOR_CLIENT_HTTP_PORT", "9393")
lock = threading.Lock()
routes = {}   # port -> {endpoint: (method, src)}
servers = {}  # port -> ThreadingHTTPServer


def parse_config(text):
    """JSON, or flat `key: value` lines with optional quotes."""
    try:
        value = json.loads(text)
        if isinstance(value, dict):
            return value
    except ValueError:
        pass
    out = {}
    for line in text.splitlines():
        if ":" in line and not line.lstrip().startswith("#"):
            key, _, val = line.partition(":")
            out[key.strip()] = val.strip().strip('"').strip("'")
    return out


def post(path, body):
    """One POST to the processor-client; returns (status, Retry-After)."""
    req = urllib.request.Request(CLIENT + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, None
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Retry-After")
    except OSError:
        return 503, "1"


class Hook(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, text, retry_after=None):
        body = text.encode()
        self.send_response(status)
        if retry_after:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        with lock:
            route = routes.get(self.server.server_port, {}).get(path)
        if route is None:
            return self.answer(404, f"no webhook at {path}\n")
        method, src = route
        if self.command != method:
            return self.answer(405, f"{path} takes {method}, not {self.command}\n")
        event = {"method": self.command, "path": self.path, "headers": dict(self.headers.items())}
        try:
            event["body"] = body.decode()
        except UnicodeDecodeError:
            event["bodyBase64"] = base64.b64encode(body).decode()
        payload = base64.b64encode(json.dumps(event).encode()).decode()
        request = {"src": src, "payload": payload}
        key = self.headers.get("Idempotency-Key") or self.headers.get("X-Request-Id")
        if key and 0 < len(key) <= 256:
            request["id"] = key
        status, retry_after = post("/event", request)
        if 200 <= status < 300:
            return self.answer(200, "ok\n")
        if status == 503:
            return self.answer(503, "the gateway is busy; retry\n", retry_after or "1")
        return self.answer(502, f"the gateway refused the event ({status})\n")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any


def start(cfg):
    spec = parse_config(cfg["config"])
    try:
        port = int(spec.get("port", ""))
    except ValueError:
        return 400, f"port {spec.get('port')!r} is not a number"
    endpoint = spec.get("endpoint", "")
    method = str(spec.get("method", "POST")).upper()
    if not endpoint.startswith("/"):
        return 400, f"endpoint {endpoint!r} must start with /"
    with lock:
        taken = routes.get(port, {}).get(endpoint)
        if taken and taken[1] != cfg["src"]:
            return 400, f"{endpoint} on port {port} is already served for {taken[1]}"
        if port not in servers:
            try:
                server = ThreadingHTTPServer(("0.0.0.0", port), Hook)
            except OSError as e:
                return 500, f"cannot listen on port {port}: {e}"
            server.daemon_threads = True
            servers[port] = server
            threading.Thread(target=server.serve_forever, daemon=True).start()
        for p in routes.values():  # a changed configuration may have moved
            for ep in [ep for ep, (_, s) in p.items() if s == cfg["src"]]:
                del p[ep]
        routes.setdefault(port, {})[endpoint] = (method, cfg["src"])
    threading.Thread(target=post, args=("/activated", cfg), daemon=True).start()
    return 200, ""


def stop(cfg):
    with lock:
        for port in list(routes):
            for ep in [ep for ep, (_, s) in routes[port].items() if s == cfg["src"]]:
                del routes[port][ep]
            if not routes[port]:
                del routes[port]
                server = servers.pop(port)
                threading.Thread(target=lambda s=server: (s.shutdown(), s.server_close()), daemon=True).start()
    return 200, ""


class Control(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        cfg = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        handler = {"/start": start, "/stop": stop}.get(self.path)
        status, text = handler(cfg) if handler else (404, "no such path")
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    port = int(os.environ.get("GATEWAY_PROCESSOR_SERVER_HTTP_PORT", "8080"))
    ThreadingHTTPServer(("127.0.0.1", port), Control).serve_forever()
