#!/usr/bin/env node
// The seeds' stream gateways as a user server: each configuration subscribes to an
// MQTT topic or a NATS subject, and every message becomes a gateway event carrying
// {"topic", "payload"} (or "payloadBase64" when the message is not UTF-8 text).
// Messages of one configuration are handed over one at a time, in order; a 503
// from the gateway waits Retry-After and resends. Stop unsubscribes.
//
// Configuration (JSON):
//   {"broker": "mqtt", "url": "mqtt://127.0.0.1:1883", "topic": "sensors/#"}
//   {"broker": "nats", "url": "nats://127.0.0.1:4222", "subject": "readings.>"}
'use strict';
const http = require('node:http');
const mqtt = require('mqtt');
const nats = require('nats');

const port = Number(process.env.GATEWAY_PROCESSOR_SERVER_HTTP_PORT || 8080);
const client = `http://127.0.0.1:${process.env.GATEWAY_PROCESSOR_CLIENT_HTTP_PORT || 9393}`;
const running = new Map(); // src -> { close(): Promise<void>, stopped: boolean }
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function post(path, body, handle) {
  while (!handle.stopped) {
    let res;
    try {
      res = await fetch(client + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    } catch {
      await sleep(200);
      continue;
    }
    if (res.ok) return true;
    if (res.status !== 503) return false;
    await sleep(1000 * Number(res.headers.get('retry-after') || 1));
  }
  return false;
}

function eventOf(topic, bytes) {
  const text = Buffer.from(bytes).toString('utf8');
  const data = Buffer.from(text, 'utf8').equals(Buffer.from(bytes))
    ? { topic, payload: text }
    : { topic, payloadBase64: Buffer.from(bytes).toString('base64') };
  return Buffer.from(JSON.stringify(data)).toString('base64');
}

/** Hands messages over one at a time so the gateway sees them in order. */
function forwarder(cfg, handle) {
  let chain = Promise.resolve();
  return (topic, bytes) => {
    const payload = eventOf(topic, bytes);
    chain = chain.then(() => post('/event', { src: cfg.src, payload }, handle));
  };
}

function parse(cfg) {
  let spec;
  try {
    spec = JSON.parse(cfg.config);
  } catch (e) {
    return [null, `configuration is not JSON: ${e.message}`];
  }
  if (spec.broker === 'mqtt' && spec.url && spec.topic) return [spec, null];
  if (spec.broker === 'nats' && spec.url && spec.subject) return [spec, null];
  return [null, 'configuration needs {"broker": "mqtt", "url", "topic"} or {"broker": "nats", "url", "subject"}'];
}

async function subscribe(cfg, spec, handle) {
  const forward = forwarder(cfg, handle);
  if (spec.broker === 'mqtt') {
    const conn = mqtt.connect(spec.url, { reconnectPeriod: 500, connectTimeout: 5000 });
    await new Promise((resolve, reject) => {
      conn.once('connect', resolve);
      conn.once('error', reject);
      setTimeout(() => reject(new Error(`cannot reach ${spec.url}`)), 5000);
    });
    await conn.subscribeAsync(spec.topic, { qos: 1 });
    conn.on('message', (topic, payload) => forward(topic, payload));
    return async () => {
      await conn.unsubscribeAsync(spec.topic).catch(() => {});
      await conn.endAsync().catch(() => {});
    };
  }
  const nc = await nats.connect({ servers: spec.url, maxReconnectAttempts: -1, timeout: 5000 });
  const sub = nc.subscribe(spec.subject);
  (async () => {
    for await (const m of sub) forward(m.subject, m.data);
  })();
  await nc.flush();
  return async () => {
    sub.unsubscribe();
    await nc.drain().catch(() => {});
  };
}

async function start(cfg) {
  const [spec, problem] = parse(cfg);
  if (!spec) return [400, problem];
  await stop(cfg);
  const handle = { stopped: false, close: async () => {} };
  try {
    handle.close = await subscribe(cfg, spec, handle);
  } catch (e) {
    return [500, `cannot subscribe: ${e.message}`];
  }
  running.set(cfg.src, handle);
  post('/activated', cfg, handle);
  return [200, ''];
}

async function stop(cfg) {
  const handle = running.get(cfg.src);
  running.delete(cfg.src);
  if (handle) {
    handle.stopped = true;
    await handle.close();
  }
  return [200, ''];
}

http
  .createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      let cfg;
      try {
        cfg = JSON.parse(Buffer.concat(chunks).toString());
      } catch {
        return res.writeHead(400).end('body is not JSON');
      }
      const op = { '/start': start, '/stop': stop }[req.url];
      const [status, text] = op ? await op(cfg) : [404, 'no such path'];
      res.writeHead(status).end(text);
    });
  })
  .listen(port, '127.0.0.1');
