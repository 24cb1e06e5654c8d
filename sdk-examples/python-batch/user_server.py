#!/usr/bin/env python3
"""A user server that sends its events in batches, each named with an id, in
Python's standard library only: what a consumer of a queue or a log does, where
one read brings many messages and a crash means reading some of them again.

Each configuration's value is JSON {"count": N, "batch": B}: on /start it posts
its running notice, then N events as `POST /events` requests of B events each.
Every event has an id unique to this start and this event ("TIMEID/SEQ"), so a
batch sent again (after a lost answer, or a restart that reads again) is
answered with the same CloudEvent ids, marked duplicate, and delivered once.
The answer has one result per event, in order: those answered 503 (the gateway
cannot take them now; a refusal holds back the later events of the same
configuration too) are sent again, in order, after their retry_after; any
other refusal is the event's own fault and is dropped."""
import base64
import json
import os
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CLIENT = "http://127.0.0.1:" + os.environ.get("GATEWAY_PROCESSOR_CLIENT_HTTP_PORT", "9393")
running = {}  # src -> threading.Event that stops its producer


def post(path, body):
    """One POST; returns (status, parsed JSON answer or None, Retry-After)."""
    req = urllib.request.Request(CLIENT + path, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r), None
    except urllib.error.HTTPError as e:
        return e.code, None, e.headers.get("Retry-After")
    except OSError:
        return 503, None, "1"


def send_batch(events, stop):
    """Posts events to /events until each is taken or refused for good."""
    while events and not stop.is_set():
        status, answer, retry_after = post("/events", events)
        if status != 200:  # the whole request was refused: wait, send again
            time.sleep(int(retry_after or "1"))
            continue
        results = answer["results"]
        again = [e for e, r in zip(events, results) if r["status"] == 503]
        if again:
            time.sleep(max(r.get("retry_after", 1) for r in results if r["status"] == 503))
        events = again


def produce(cfg, settings, stop):
    post("/activated", cfg)
    count, size = int(settings.get("count", 0)), max(1, int(settings.get("batch", 100)))
    for start in range(0, count, size):
        batch = []
        for seq in range(start, min(count, start + size)):
            data = json.dumps({"src": cfg["src"], "seq": seq, "timeID": cfg["timeID"]}).encode()
            batch.append({"src": cfg["src"], "id": f"{cfg['timeID']}/{seq}",
                          "payload": base64.b64encode(data).decode()})
        send_batch(batch, stop)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        cfg = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if cfg["src"] in running:
            running.pop(cfg["src"]).set()
        if self.path == "/start":
            try:
                settings = json.loads(cfg["config"])
            except ValueError:
                settings = {}
            running[cfg["src"]] = stop = threading.Event()
            threading.Thread(target=produce, args=(cfg, settings, stop), daemon=True).start()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


port = int(os.environ.get("GATEWAY_PROCESSOR_SERVER_HTTP_PORT", "8080"))
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
