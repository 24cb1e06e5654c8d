#!/usr/bin/env python3
"""A gRPC user server for tests, on grpcio, serving either contract: the generic
event source (--contract generic: generic.Eventing/StartEventSource) or Argo
v0.6's gateway (--contract v06: gateways.GatewayExecutor/RunGateway). Its stubs are
generated at start by grpcio-tools from the .proto files in --proto-dir.

Each configuration's value is JSON: {"count": N, "interval_ms": M, "pad": B,
"reject": bool, "silent": bool}. A call streams N events (forever without
"count"), each {"src", "seq", "timeID"} (timeID names the call) padded with B
bytes, then keeps the stream open. "reject" aborts the call with
INVALID_ARGUMENT; "silent" never sends response headers. Every call's start and
end, and every event handed to grpc, is appended to --journal as a JSON line
with its time (`at`, seconds since the epoch)."""
import argparse
import importlib
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from concurrent import futures

import grpc
from grpc_tools import protoc

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--contract", choices=["generic", "v06"], default="generic")
parser.add_argument("--journal", required=True)
parser.add_argument("--proto-dir", required=True)
parser.add_argument("--tls-cert")
parser.add_argument("--tls-key")
args = parser.parse_args()


def load_stubs(name):
    """Generates name_pb2 and name_pb2_grpc from name.proto and imports them."""
    out = tempfile.mkdtemp(prefix="grpc-stubs-")
    rc = protoc.main([
        "grpc_tools.protoc", f"-I{args.proto_dir}", f"--python_out={out}",
        f"--grpc_python_out={out}", os.path.join(args.proto_dir, f"{name}.proto"),
    ])
    if rc != 0:
        sys.exit(f"protoc failed on {name}.proto")
    sys.path.insert(0, out)
    return importlib.import_module(f"{name}_pb2"), importlib.import_module(f"{name}_pb2_grpc")


lock = threading.Lock()


def journal(**entry):
    entry["at"] = time.time()
    with lock:
        with open(args.journal, "a") as f:
            f.write(json.dumps(entry) + "\n")


def stream(key, value, context, make_event):
    call = uuid.uuid4().hex
    auth = dict(context.invocation_metadata()).get("authorization")
    journal(op="start", src=key, call=call, auth=auth, config=value)
    context.add_callback(lambda: journal(op="end", src=key, call=call))
    try:
        cfg = json.loads(value)
    except ValueError:
        cfg = {}
    if not isinstance(cfg, dict):
        cfg = {}
    if cfg.get("reject"):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid configuration: reject requested")
    if cfg.get("silent"):
        while context.is_active():
            time.sleep(0.05)
        return
    # Response headers now: the processor-client counts the stream open (Running)
    # once they arrive, and grpcio would otherwise wait for the first event.
    context.send_initial_metadata(())
    count = cfg.get("count")
    interval = cfg.get("interval_ms", 10) / 1000.0
    pad = "x" * int(cfg.get("pad", 0))
    seq = 0
    while context.is_active() and (count is None or seq < count):
        payload = {"src": key, "seq": seq, "timeID": call}
        if pad:
            payload["pad"] = pad
        yield make_event(key, json.dumps(payload).encode())
        journal(op="sent", src=key, call=call, seq=seq)
        seq += 1
        if interval:
            time.sleep(interval)
    while context.is_active():
        time.sleep(0.05)


if args.contract == "generic":
    pb2, pb2_grpc = load_stubs("eventing")

    class Servicer(pb2_grpc.EventingServicer):
        def StartEventSource(self, request, context):
            return stream(request.name, request.config.decode(), context,
                          lambda key, data: pb2.Event(name=key, payload=data))

    add = pb2_grpc.add_EventingServicer_to_server
else:
    pb2, pb2_grpc = load_stubs("gateway")

    class Servicer(pb2_grpc.GatewayExecutorServicer):
        def RunGateway(self, request, context):
            return stream(request.src, request.config, context,
                          lambda key, data: pb2.Event(data=data))

    add = pb2_grpc.add_GatewayExecutorServicer_to_server

# Every open stream holds a worker thread of the sync server for its lifetime.
server = grpc.server(futures.ThreadPoolExecutor(max_workers=512))
add(Servicer(), server)
address = f"127.0.0.1:{args.port}"
if args.tls_cert:
    with open(args.tls_cert, "rb") as c, open(args.tls_key, "rb") as k:
        creds = grpc.ssl_server_credentials([(k.read(), c.read())])
    server.add_secure_port(address, creds)
else:
    server.add_insecure_port(address)
server.start()
server.wait_for_termination()
