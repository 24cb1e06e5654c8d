"""MinIO's ListenBucketNotification in front of the tests' S3 server (moto),
which does not offer it, and neither does any S3 server that can run here.

Every request is passed to the S3 server behind; a signed
`GET /{bucket}?events=...&prefix=...&suffix=...` is answered as MinIO answers
it (cmd/listen-notification-handlers.go): 200, a chunked stream of one JSON
object per line, `{"Records": [event]}`, and a single space every 500 ms to
keep the connection alive. An event is sent for every object put or deleted
through this server that the listener's events, prefix and suffix match.

    python3 s3_listen.py --port 9001 --upstream 127.0.0.1:9000
"""
import argparse
import datetime
import http.client
import json
import queue
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--upstream", required=True)
args = parser.parse_args()

listeners = []  # (bucket, events, prefix, suffix, queue)
lock = threading.Lock()
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


def publish(name, bucket, key, size, etag):
    record = {
        "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "",
        "eventTime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "eventName": name,
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket},
               "object": {"key": urllib.parse.quote(key), "size": size, "eTag": etag}},
    }
    with lock:
        for (b, events, prefix, suffix, q) in listeners:
            wanted = any(name == e or (e.endswith("*") and name.startswith(e[:-1])) for e in events)
            if b == bucket and wanted and key.startswith(prefix) and key.endswith(suffix):
                q.put(record)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def forward(self):
        body = self.body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        headers["Content-Length"] = str(len(body))
        up = http.client.HTTPConnection(args.upstream, timeout=30)
        up.request(self.command, self.path, body=body, headers=headers)
        r = up.getresponse()
        data = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        up.close()
        return r, len(body)

    def object(self):
        path = urllib.parse.urlsplit(self.path).path
        bucket, _, key = path.lstrip("/").partition("/")
        return bucket, urllib.parse.unquote(key)

    def do_PUT(self):
        r, size = self.forward()
        bucket, key = self.object()
        if key and 200 <= r.status < 300:
            etag = (r.getheader("ETag") or "").strip('"')
            publish("s3:ObjectCreated:Put", bucket, key, size, etag)

    def do_DELETE(self):
        r, _ = self.forward()
        bucket, key = self.object()
        if key and 200 <= r.status < 300:
            publish("s3:ObjectRemoved:Delete", bucket, key, 0, "")

    def do_POST(self):
        self.forward()

    def do_HEAD(self):
        self.forward()

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if "events" not in query:
            self.forward()
            return
        bucket = url.path.strip("/")
        q = queue.Queue()
        entry = (bucket, query["events"], query.get("prefix", [""])[0],
                 query.get("suffix", [""])[0], q)
        with lock:
            listeners.append(entry)
        print(f"listener on {bucket} {query['events']}", flush=True)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while True:
                try:
                    data = (json.dumps({"Records": [q.get(timeout=0.5)]}) + "\n").encode()
                except queue.Empty:
                    data = b" "
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
        except OSError:
            pass
        finally:
            with lock:
                listeners.remove(entry)
            self.close_connection = True


server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
server.daemon_threads = True
print(f"listen stand-in on 127.0.0.1:{args.port} for {args.upstream}", flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    sys.exit(0)
