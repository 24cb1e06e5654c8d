"""A real S3 server for the tests: moto's server mode, whose state survives a
SIGKILL. moto keeps buckets in memory, so every request is recorded (moto's
own recorder) and a restart replays the record *before* it listens: a client
never sees a half-restored bucket, only a server that was down and is back.

    python3 s3_server.py --port 9000 --record /tmp/s3.jsonl [--tls-cert C --tls-key K]
"""
import argparse
import base64
import json
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--record", required=True)
parser.add_argument("--tls-cert")
parser.add_argument("--tls-key")
args = parser.parse_args()

os.environ["MOTO_ENABLE_RECORDING"] = "True"
os.environ["MOTO_RECORDER_FILEPATH"] = args.record

from moto.moto_api import recorder  # noqa: E402
from moto.server import DomainDispatcherApplication, create_backend_app  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402
from werkzeug.test import Client  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

app = DomainDispatcherApplication(create_backend_app)

recorder.stop_recording()
replayed = 0
if os.path.exists(args.record):
    client = Client(app)
    with open(args.record) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                break  # a line torn by the kill: that request never completed
            body = row.get("body") or b""
            if row.get("body_encoded"):
                body = base64.b64decode(body)
            elif isinstance(body, str):
                body = body.encode()
            url = urlsplit(row["url"])
            headers = {k: v for k, v in row["headers"].items()
                       if k.lower() not in ("content-length", "transfer-encoding")}
            client.open(url.path, query_string=url.query, method=row["method"],
                        headers=headers, data=body,
                        base_url=f"{url.scheme}://{url.netloc}")
            replayed += 1
recorder.start_recording()

tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
server = make_server("127.0.0.1", args.port, app, threaded=True, ssl_context=tls)
print(f"s3 server on 127.0.0.1:{args.port}, {replayed} requests replayed", flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    sys.exit(0)
