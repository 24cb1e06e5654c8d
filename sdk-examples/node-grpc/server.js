// A gRPC user server on @grpc/grpc-js for the generic event source contract
// (generic.Eventing/StartEventSource in openapi/proto/eventing.proto), loaded
// from the .proto file by @grpc/proto-loader. Each configuration is a ticker,
// {"intervalMs": 1000, "message": "hello"}; every tick is one event. A
// configuration that cannot work is answered INVALID_ARGUMENT, which the gateway
// shows as Error and does not retry until its value changes.
"use strict";
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const protoDir = process.env.PROTO_DIR || path.join(__dirname, "..", "..", "openapi", "proto");
const port = process.env.GATEWAY_PROCESSOR_SERVER_GRPC_PORT || "50051";
const definition = protoLoader.loadSync(path.join(protoDir, "eventing.proto"), {
  keepCase: true,
  longs: String,
  defaults: true,
});
const generic = grpc.loadPackageDefinition(definition).generic;

function startEventSource(call) {
  let cfg;
  try {
    cfg = JSON.parse(Buffer.from(call.request.config).toString("utf8"));
    if (typeof cfg !== "object" || cfg === null) throw new Error("not a JSON object");
    if (cfg.intervalMs !== undefined && !(cfg.intervalMs > 0)) throw new Error("intervalMs must be above zero");
  } catch (e) {
    call.emit("error", { code: grpc.status.INVALID_ARGUMENT, details: `invalid configuration: ${e.message}` });
    return;
  }
  // Response headers at once: the gateway counts the configuration Running
  // when they arrive.
  call.sendMetadata(new grpc.Metadata());
  let tick = 0;
  let timer = null;
  const next = () => {
    tick += 1;
    const payload = Buffer.from(JSON.stringify({ tick, message: String(cfg.message || "") }));
    // write() returns false when HTTP/2 flow control is holding the stream:
    // wait for "drain" instead of buffering without bound.
    if (call.write({ name: call.request.name, payload })) {
      timer = setTimeout(next, cfg.intervalMs || 1000);
    } else {
      call.once("drain", () => { timer = setTimeout(next, cfg.intervalMs || 1000); });
    }
  };
  call.on("cancelled", () => clearTimeout(timer));
  next();
}

const server = new grpc.Server();
server.addService(generic.Eventing.service, { StartEventSource: startEventSource });
server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err) => {
  if (err) {
    console.error(`cannot listen on ${port}: ${err.message}`);
    process.exit(1);
  }
  console.log(`gRPC ticker listening on ${port}`);
});
