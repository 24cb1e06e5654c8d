#!/usr/bin/env python3
"""A gRPC user server on grpcio for the generic event source contract
(generic.Eventing/StartEventSource in openapi/proto/eventing.proto): each
configuration is a ticker, {"intervalMs": 1000, "message": "hello"}, and every
tick is one event. The stubs are generated from the .proto file by grpcio-tools
when the server starts, so they always match the contract.

The processor-client calls StartEventSource once per configuration and reads
the stream; it cancels the call when the configuration is removed or changed,
and calls again if the stream ends. A configuration that cannot work is
answered INVALID_ARGUMENT: the gateway shows it in Error and does not retry it
until its value changes."""
import importlib
import json
import os
import sys
import tempfile
import time
from concurrent import futures

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.environ.get("PROTO_DIR", os.path.join(HERE, "..", "..", "openapi", "proto"))
PORT = int(os.environ.get("GATEWAY_PROCESSOR_SERVER_GRPC_PORT", "50051"))


def load_stubs():
    out = tempfile.mkdtemp(prefix="eventing-stubs-")
    if protoc.main(["grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={out}",
                    f"--grpc_python_out={out}", os.path.join(PROTO_DIR, "eventing.proto")]) != 0:
        sys.exit("grpc_tools.protoc failed on eventing.proto")
    sys.path.insert(0, out)
    return importlib.import_module("eventing_pb2"), importlib.import_module("eventing_pb2_grpc")


pb2, pb2_grpc = load_stubs()


class Ticker(pb2_grpc.EventingServicer):
    def StartEventSource(self, request, context):
        try:
            cfg = json.loads(request.config)
            interval = float(cfg.get("intervalMs", 1000)) / 1000.0
            message = str(cfg.get("message", ""))
            if interval <= 0:
                raise ValueError("intervalMs must be above zero")
        except (ValueError, TypeError, AttributeError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid configuration: {e}")
        # Response headers at once: the gateway shows the configuration Running
        # when they arrive (grpcio would otherwise wait for the first event).
        context.send_initial_metadata(())
        tick = 0
        while context.is_active():
            tick += 1
            payload = json.dumps({"tick": tick, "message": message}).encode()
            yield pb2.Event(name=request.name, payload=payload)
            time.sleep(interval)


# Each open stream holds a worker thread for as long as it runs.
server = grpc.server(futures.ThreadPoolExecutor(max_workers=256))
pb2_grpc.add_EventingServicer_to_server(Ticker(), server)
server.add_insecure_port(f"127.0.0.1:{PORT}")
server.start()
server.wait_for_termination()
