#!/usr/bin/env node
// A user server for tests in Node's standard library only; the same behaviour as
// user_server.py: configuration values are JSON {"count", "interval_ms", "reject"},
// events carry {"src","seq","id","timeID"}, 503 + Retry-After is honoured, and
// every start, stop and acknowledged event is appended to the journal.
'use strict';
const http = require('node:http');
const fs = require('node:fs');

const arg = (name) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
};
const port = Number(arg('port'));
const processor = new URL(arg('processor'));
const journalPath = arg('journal');
const running = new Map(); // src -> { stopped: bool }
const agent = new http.Agent({ keepAlive: true });

const journal = (entry) => fs.appendFileSync(journalPath, JSON.stringify(entry) + '\n');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function post(path, body) {
  return new Promise((resolve, reject) => {
    const data = Buffer.from(JSON.stringify(body));
    const req = http.request(
      { host: processor.hostname, port: processor.port, path, method: 'POST', agent,
        headers: { 'Content-Type': 'application/json', 'Content-Length': data.length } },
      (res) => {
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode, retryAfter: res.headers['retry-after'] }));
      });
    req.on('error', reject);
    req.end(data);
  });
}

async function emit(data, handle) {
  let cfg = {};
  try { cfg = JSON.parse(data.config); } catch { /* opaque value: defaults */ }
  const interval = cfg.interval_ms ?? 10;
  while (!handle.stopped) {
    try { if ((await post('/activated', data)).status < 500) break; } catch { /* retry */ }
    await sleep(50);
  }
  for (let seq = 0; !handle.stopped && (cfg.count === undefined || seq < cfg.count); seq++) {
    const payload = Buffer.from(JSON.stringify({ src: data.src, seq, id: data.id, timeID: data.timeID }));
    const body = { src: data.src, payload: payload.toString('base64') };
    while (!handle.stopped) {
      let res;
      try { res = await post('/event', body); } catch { await sleep(50); continue; }
      if (res.status >= 200 && res.status < 300) { journal({ op: 'acked', src: data.src, timeID: data.timeID, seq }); break; }
      if (res.status === 503) { await sleep(1000 * Number(res.retryAfter || 1)); continue; }
      journal({ op: 'refused', src: data.src, seq, status: res.status });
      break;
    }
    await sleep(interval);
  }
}

http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const data = JSON.parse(Buffer.concat(chunks).toString() || '{}');
    const op = req.url.replace(/^\//, '');
    journal({ op, ...data });
    if (op === 'start') {
      let cfg = {};
      try { cfg = JSON.parse(data.config); } catch { /* opaque */ }
      if (cfg && cfg.reject) { res.writeHead(400); return res.end('invalid configuration: reject requested'); }
      const old = running.get(data.src);
      if (old) old.stopped = true;
      const handle = { stopped: false };
      running.set(data.src, handle);
      emit(data, handle);
      res.writeHead(200); return res.end();
    }
    if (op === 'stop') {
      const handle = running.get(data.src);
      if (handle) handle.stopped = true;
      running.delete(data.src);
      res.writeHead(200); return res.end();
    }
    res.writeHead(404); res.end('no such path');
  });
}).listen(port, '127.0.0.1');
