// A gateway user server in TypeScript on Node's standard library. The types come
// from openapi/ through openapi-typescript (src/generated/, never edited by hand):
// what /start and /stop receive, and what /event, /events and /activated take.
import * as http from 'node:http';
import type { components as UserServer } from './generated/user-server';
import type { components as ProcessorClient } from './generated/processor-client';

type ConfigData = UserServer['schemas']['ConfigData'];
type EventRequest = ProcessorClient['schemas']['EventRequest'];
type Notice = ProcessorClient['schemas']['Notice'];
type BatchAnswer = ProcessorClient['schemas']['BatchAnswer'];

const port = Number(process.env.GATEWAY_PROCESSOR_SERVER_HTTP_PORT ?? 8080);
const client = `http://127.0.0.1:${process.env.GATEWAY_PROCESSOR_CLIENT_HTTP_PORT ?? 9393}`;
const running = new Map<string, { stopped: boolean }>();
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** POSTs until the processor-client answers 2xx; 503 waits Retry-After, then resends. */
async function post(path: string, body: EventRequest | Notice, handle: { stopped: boolean }): Promise<boolean> {
  while (!handle.stopped) {
    let response: Response;
    try {
      response = await fetch(client + path, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
    } catch {
      await sleep(100);
      continue;
    }
    if (response.ok) return true;
    if (response.status !== 503) return false;
    await sleep(1000 * Number(response.headers.get('retry-after') ?? 1));
  }
  return false;
}

/**
 * POSTs events to /events until each is taken: the answer has one result per
 * event, in order; those answered 503 (a refusal for now holds back the later
 * events of their configuration too) are sent again, in order, after the longest
 * retry_after; any other refusal is dropped. Each event has an id, so one sent
 * again after a lost answer is answered as a duplicate, never delivered twice.
 */
async function postBatch(events: EventRequest[], handle: { stopped: boolean }): Promise<void> {
  let pending = events;
  while (pending.length > 0 && !handle.stopped) {
    let answer: BatchAnswer;
    try {
      const response = await fetch(client + '/events', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(pending),
      });
      if (!response.ok) {
        console.error(`/events refused the batch: ${response.status} ${await response.text()}`);
        return;
      }
      answer = (await response.json()) as BatchAnswer;
    } catch {
      await sleep(100);
      continue;
    }
    const again = pending.filter((_, i) => answer.results[i]?.status === 503);
    const wait = Math.max(1, ...answer.results.map((r) => r.retry_after ?? 0));
    pending = again;
    if (pending.length > 0) await sleep(1000 * wait);
  }
}

/**
 * Each configuration's value is JSON {"count": N, "interval_ms": M, "batch": B};
 * count absent: forever. With batch, B events at a time go to /events.
 */
async function produce(
  cfg: ConfigData,
  settings: { count?: number; interval_ms?: number; batch?: number },
  handle: { stopped: boolean },
) {
  await post('/activated', { src: cfg.src, id: cfg.id, timeID: cfg.timeID, config: cfg.config }, handle);
  let batch: EventRequest[] = [];
  for (let seq = 0; !handle.stopped && (settings.count === undefined || seq < settings.count); seq++) {
    const payload = Buffer.from(JSON.stringify({ src: cfg.src, seq, id: cfg.id, timeID: cfg.timeID }));
    // The event's own name: unique to this start and this event, the same
    // each time it is sent.
    const event = { src: cfg.src, payload: payload.toString('base64'), id: `${cfg.timeID}/${seq}` };
    if (settings.batch) {
      batch.push(event);
      if (batch.length < settings.batch) continue;
      await postBatch(batch, handle);
      batch = [];
    } else {
      await post('/event', event, handle);
    }
    await sleep(settings.interval_ms ?? 1000);
  }
  if (batch.length > 0) await postBatch(batch, handle);
}

function start(cfg: ConfigData): { status: number; body?: string } {
  let settings: { count?: number; interval_ms?: number; reject?: boolean } = {};
  try {
    settings = JSON.parse(cfg.config);
  } catch {
    /* an opaque value: defaults */
  }
  if (settings?.reject) return { status: 400, body: 'invalid configuration: reject requested' };
  const previous = running.get(cfg.src);
  if (previous) previous.stopped = true;
  const handle = { stopped: false };
  running.set(cfg.src, handle);
  void produce(cfg, settings ?? {}, handle);
  return { status: 200 };
}

function stop(cfg: ConfigData): { status: number } {
  const handle = running.get(cfg.src);
  if (handle) handle.stopped = true;
  running.delete(cfg.src);
  return { status: 200 };
}

http
  .createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      let cfg: ConfigData;
      try {
        cfg = JSON.parse(Buffer.concat(chunks).toString()) as ConfigData;
      } catch {
        res.writeHead(400).end('body is not JSON');
        return;
      }
      const answer = req.url === '/start' ? start(cfg) : req.url === '/stop' ? stop(cfg) : { status: 404, body: 'no such path' };
      res.writeHead(answer.status).end('body' in answer ? answer.body : undefined);
    });
  })
  .listen(port, '127.0.0.1');
