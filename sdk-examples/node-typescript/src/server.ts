// A gateway user server in TypeScript on Node's standard library. The types come
// from openapi/ through openapi-typescript (src/generated/, never edited by hand):
// what /start and /stop receive, and what /event and /activated take.
import * as http from 'node:http';
import type { components as UserServer } from './generated/user-server';
import type { components as ProcessorClient } from './generated/processor-client';

type ConfigData = UserServer['schemas']['ConfigData'];
type EventRequest = ProcessorClient['schemas']['EventRequest'];
type Notice = ProcessorClient['schemas']['Notice'];

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

/** Each configuration's value is JSON {"count": N, "interval_ms": M}; count absent: forever. */
async function produce(cfg: ConfigData, settings: { count?: number; interval_ms?: number }, handle: { stopped: boolean }) {
  await post('/activated', { src: cfg.src, id: cfg.id, timeID: cfg.timeID, config: cfg.config }, handle);
  for (let seq = 0; !handle.stopped && (settings.count === undefined || seq < settings.count); seq++) {
    const payload = Buffer.from(JSON.stringify({ src: cfg.src, seq, id: cfg.id, timeID: cfg.timeID }));
    await post('/event', { src: cfg.src, payload: payload.toString('base64') }, handle);
    await sleep(settings.interval_ms ?? 1000);
  }
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
