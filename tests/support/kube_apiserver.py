#!/usr/bin/env python3
"""An emulator of the Kubernetes API server's list and watch, for the resource
gateway's tests: no real kube-apiserver can be installed on these machines.

It serves, for a few kinds (pods, configmaps, deployments and a custom
resource, widgets.example.com), what a watcher uses of the real API:
- list, namespaced or across namespaces, with `labelSelector` (=, ==, !=, in,
  notin, exists, !key) and `fieldSelector` (metadata.name, metadata.namespace,
  and for pods status.phase and spec.nodeName; any other field is a 400, as
  the real server answers);
- watch (`watch=true`) from a `resourceVersion`, as a chunked stream of JSON
  lines: ADDED, MODIFIED, DELETED (an object that starts or stops matching the
  selectors is ADDED or DELETED, as the real server does), BOOKMARK every
  `--bookmark-interval` when `allowWatchBookmarks` is asked, ending after
  `timeoutSeconds`; a `resourceVersion` older than the history kept is
  answered with an ERROR event of code 410 (Expired), as etcd's compaction
  makes the real server do;
- resourceVersions from one counter across every kind, uids, and
  creationTimestamps;
- a bearer token (`--token`), 401 without it; `--forbid RESOURCE` answers 403.

Tests drive it through /emulator/...: POST apply (create or update an
object), POST delete, POST compact (forget the history: older versions are
410 from now on), POST cut (end every open watch), POST hold (end them, and
keep new ones waiting until POST release), GET requests (what was asked,
path and query).
"""

import argparse
import json
import threading
import time
import urllib.parse
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# resource -> (group, version, kind, namespaced)
KINDS = {
    "pods": ("", "v1", "Pod", True),
    "configmaps": ("", "v1", "ConfigMap", True),
    "deployments": ("apps", "v1", "Deployment", True),
    "widgets": ("example.com", "v1", "Widget", True),
    "namespaces": ("", "v1", "Namespace", False),
}
FIELDS = {
    "pods": {"status.phase", "spec.nodeName"},
}


class World:
    def __init__(self):
        self.cond = threading.Condition()
        self.rv = 1000
        self.objects = {}  # (resource, namespace, name) -> object
        self.history = []  # (rv, type, resource, object, old object)
        self.oldest = 0  # versions below this are compacted away
        self.cut = 0  # bumped to end every open watch
        self.held = False  # new watches wait while set
        self.requests = []

    def apply(self, resource, obj):
        with self.cond:
            meta = obj.setdefault("metadata", {})
            ns = meta.get("namespace", "") if KINDS[resource][3] else ""
            key = (resource, ns, meta["name"])
            old = self.objects.get(key)
            self.rv += 1
            if old is None:
                meta["uid"] = str(uuid.uuid4())
                meta["creationTimestamp"] = meta.get("creationTimestamp") or now()
            else:
                meta["uid"] = old["metadata"]["uid"]
                meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            meta["resourceVersion"] = str(self.rv)
            group, version, kind, _ = KINDS[resource]
            obj["apiVersion"] = f"{group}/{version}" if group else version
            obj["kind"] = kind
            self.objects[key] = obj
            self.history.append((self.rv, "MODIFIED" if old else "ADDED", resource, obj, old))
            self.cond.notify_all()
            return obj

    def delete(self, resource, namespace, name):
        with self.cond:
            key = (resource, namespace if KINDS[resource][3] else "", name)
            old = self.objects.pop(key, None)
            if old is None:
                return None
            self.rv += 1
            gone = json.loads(json.dumps(old))
            gone["metadata"]["resourceVersion"] = str(self.rv)
            self.history.append((self.rv, "DELETED", resource, gone, old))
            self.cond.notify_all()
            return gone


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def split_requirements(text):
    """Splits a selector at its commas, not those inside parentheses."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def label_matcher(text):
    """A function of a labels dict, or raises ValueError."""
    tests = []
    for req in split_requirements(text or ""):
        words = req.split()
        if len(words) == 3 and words[1] in ("in", "notin"):
            key, op, vals = words
            if not (vals.startswith("(") and vals.endswith(")")):
                raise ValueError(f"unable to parse requirement: {req}")
            values = {v.strip() for v in vals[1:-1].split(",")}
            tests.append((lambda k, vs: lambda l: l.get(k) in vs)(key, values)
                         if op == "in" else
                         (lambda k, vs: lambda l: l.get(k) not in vs)(key, values))
        elif "!=" in req:
            k, v = req.split("!=", 1)
            tests.append((lambda k, v: lambda l: l.get(k) != v)(k.strip(), v.strip()))
        elif "==" in req or "=" in req:
            k, v = req.split("==", 1) if "==" in req else req.split("=", 1)
            tests.append((lambda k, v: lambda l: l.get(k) == v)(k.strip(), v.strip()))
        elif req.startswith("!"):
            tests.append((lambda k: lambda l: k not in l)(req[1:].strip()))
        elif req and all(c.isalnum() or c in "-_./" for c in req):
            tests.append((lambda k: lambda l: k in l)(req))
        else:
            raise ValueError(f"unable to parse requirement: {req}")
    return lambda labels: all(t(labels) for t in tests)


def field_of(obj, path):
    cur = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def field_matcher(resource, text):
    tests = []
    allowed = {"metadata.name", "metadata.namespace"} | FIELDS.get(resource, set())
    for req in split_requirements(text or ""):
        if "!=" in req:
            k, v = req.split("!=", 1)
            neg = True
        elif "==" in req or "=" in req:
            k, v = req.split("==", 1) if "==" in req else req.split("=", 1)
            neg = False
        else:
            raise ValueError(f"invalid field selector: {req}")
        k = k.strip()
        if k not in allowed:
            raise ValueError(f'field label not supported: {k}')
        tests.append((lambda k, v, neg: lambda o: (field_of(o, k) == v) != neg)(k, v.strip(), neg))
    return lambda obj: all(t(obj) for t in tests)


def parse_path(path):
    """(resource, namespace or None) of an API path, or None."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    ns = None
    if len(rest) == 3 and rest[0] == "namespaces":
        ns, rest = rest[1], rest[2:]
    if len(rest) != 1:
        return None
    resource = rest[0]
    kind = KINDS.get(resource)
    if kind is None or kind[0] != group or kind[1] != version:
        return ("?", f"the server could not find the requested resource ({group}/{version} {resource})")
    return (resource, ns)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    world = None
    args = None

    def log_message(self, *a):
        pass

    def send_json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def status(self, code, reason, message):
        self.send_json(code, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                              "status": "Failure", "message": message, "reason": reason, "code": code})

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def do_POST(self):
        w = self.world
        url = urllib.parse.urlsplit(self.path)
        body = self.read_body()
        if url.path == "/emulator/apply":
            self.send_json(200, w.apply(body.pop("resource"), body))
        elif url.path == "/emulator/delete":
            gone = w.delete(body["resource"], body.get("namespace", ""), body["name"])
            self.send_json(200 if gone else 404, gone or {})
        elif url.path == "/emulator/compact":
            with w.cond:
                w.oldest = w.rv + 1
                w.history = []
            self.send_json(200, {"oldest": w.oldest})
        elif url.path in ("/emulator/cut", "/emulator/hold", "/emulator/release"):
            with w.cond:
                if url.path != "/emulator/release":
                    w.cut += 1
                w.held = url.path == "/emulator/hold"
                w.cond.notify_all()
            self.send_json(200, {})
        else:
            self.status(404, "NotFound", "no such emulator endpoint")

    def do_GET(self):
        w = self.world
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/emulator/requests":
            with w.cond:
                self.send_json(200, w.requests)
            return
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        with w.cond:
            w.requests.append({"path": url.path, "query": q})
        if self.args.token and self.headers.get("Authorization") != f"Bearer {self.args.token}":
            return self.status(401, "Unauthorized", "Unauthorized")
        where = parse_path(url.path)
        if where is None:
            return self.status(404, "NotFound", "the server could not find the requested resource")
        if where[0] == "?":
            return self.status(404, "NotFound", where[1])
        resource, ns = where
        if resource in self.args.forbid:
            return self.status(403, "Forbidden",
                               f'{resource} is forbidden: User "system:serviceaccount:default:gateway" '
                               f'cannot list resource "{resource}" at the cluster scope')
        try:
            labels = label_matcher(q.get("labelSelector"))
            fields = field_matcher(resource, q.get("fieldSelector"))
        except ValueError as e:
            return self.status(400, "BadRequest", str(e))

        def matches(obj):
            if obj is None:
                return False
            meta = obj["metadata"]
            if ns is not None and meta.get("namespace") != ns:
                return False
            return labels(meta.get("labels") or {}) and fields(obj)

        if q.get("watch") in ("true", "1"):
            return self.watch(resource, matches, q)
        group, version, kind, _ = KINDS[resource]
        with w.cond:
            items = [o for (r, _, _), o in sorted(w.objects.items()) if r == resource and matches(o)]
            rv = w.rv
        self.send_json(200, {"kind": f"{kind}List", "apiVersion": f"{group}/{version}" if group else version,
                             "metadata": {"resourceVersion": str(rv)}, "items": items})

    def chunk(self, event):
        data = (json.dumps(event) + "\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def watch(self, resource, matches, q):
        w = self.world
        group, version, kind, _ = KINDS[resource]
        api_version = f"{group}/{version}" if group else version
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        deadline = time.monotonic() + float(q.get("timeoutSeconds") or 1800)
        bookmarks = q.get("allowWatchBookmarks") == "true"
        next_bookmark = time.monotonic() + self.args.bookmark_interval
        try:
            with w.cond:
                while w.held:
                    w.cond.wait()
                start = q.get("resourceVersion") or "0"
                cut = w.cut
                if start == "0":
                    since = w.rv
                    backlog = [("ADDED", o) for (r, _, _), o in sorted(w.objects.items())
                               if r == resource and matches(o)]
                else:
                    since = int(start)
                    backlog = []
                    if since < w.oldest - 1:
                        self.chunk({"type": "ERROR", "object": {
                            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": f"too old resource version: {since} ({w.oldest - 1})",
                            "reason": "Expired", "code": 410}})
                        self.wfile.write(b"0\r\n\r\n")
                        return
            for typ, obj in backlog:
                self.chunk({"type": typ, "object": obj})
            while True:
                with w.cond:
                    events = [h for h in w.history if h[0] > since and h[2] == resource]
                    if not events:
                        wait = min(deadline, next_bookmark if bookmarks else deadline) - time.monotonic()
                        if wait > 0 and w.cut == cut:
                            w.cond.wait(wait)
                        events = [h for h in w.history if h[0] > since and h[2] == resource]
                    if w.cut != cut:
                        break
                    current = w.rv
                for rv, typ, _, obj, old in events:
                    since = rv
                    now_in, was_in = matches(obj), matches(old)
                    if typ == "MODIFIED" and now_in and not was_in:
                        typ = "ADDED"
                    elif typ == "MODIFIED" and was_in and not now_in:
                        typ = "DELETED"
                    elif typ == "DELETED" and not was_in:
                        continue
                    elif typ != "DELETED" and not now_in:
                        continue
                    self.chunk({"type": typ, "object": obj})
                if time.monotonic() >= deadline:
                    break
                if bookmarks and time.monotonic() >= next_bookmark:
                    since = max(since, current)
                    self.chunk({"type": "BOOKMARK", "object": {
                        "kind": kind, "apiVersion": api_version,
                        "metadata": {"resourceVersion": str(since)}}})
                    next_bookmark = time.monotonic() + self.args.bookmark_interval
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token", default="")
    p.add_argument("--forbid", action="append", default=[])
    p.add_argument("--bookmark-interval", type=float, default=1.0)
    args = p.parse_args()
    Handler.world = World()
    Handler.args = args
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
