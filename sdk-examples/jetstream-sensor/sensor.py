#!/usr/bin/env python3
"""A sensor that reads the gateway's CloudEvents from NATS.

JetStream (default): a durable pull consumer on the gateway's stream. It acknowledges
each event after handling it, so a restarted sensor resumes where it stopped;
--start-seq or --start-time make a new consumer replay stored events from that
point. Core NATS (--core): a plain subscription, at most once.

Events arrive in the CloudEvents NATS binding's structured mode (the payload is the
JSON event; the transformer's default) or binary mode (attributes in ce- headers);
both are parsed with the official CloudEvents SDK.

  pip install nats-py cloudevents
  python3 sensor.py --stream DEMO-GATEWAY --durable my-sensor
  python3 sensor.py --stream DEMO-GATEWAY --durable replay-1 --start-seq 100
  python3 sensor.py --core --subject 'demo-gateway.>'
"""
import argparse
import asyncio
import base64
import json
import sys

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from cloudevents.core.formats.json import JSONFormat


def parse(msg):
    headers = {k.lower(): v for k, v in (msg.headers or {}).items()}
    if "ce-specversion" in headers:  # binary mode
        return from_http_event(HTTPMessage(headers=headers, body=msg.data))
    return JSONFormat().read(None, msg.data)  # structured mode


def record(msg, out):
    event = parse(msg)
    data = event.get_data()
    if isinstance(data, (bytes, bytearray)):
        data = {"base64": base64.b64encode(data).decode()}
    line = {
        "id": event.get_id(),
        "source": event.get_source(),
        "type": event.get_type(),
        "subject": event.get_subject(),
        "datacontenttype": event.get_datacontenttype(),
        # A user server's own id for the event, when it gave one.
        "originid": event.get_extension("originid"),
        "nats_subject": msg.subject,
        "data": data,
    }
    if msg.reply and msg.metadata is not None:
        line["stream_seq"] = msg.metadata.sequence.stream
    text = json.dumps(line)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n")
    else:
        print(text, flush=True)


async def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="nats://127.0.0.1:4222")
    p.add_argument("--stream", help="JetStream stream (the transformer's NATS_STREAM)")
    p.add_argument("--durable", default="sensor", help="durable consumer name: resume point is kept by the server")
    p.add_argument("--subject", default=">", help="subject filter")
    p.add_argument("--start-seq", type=int, help="replay from this stream sequence (new consumer)")
    p.add_argument("--start-time", help="replay from this RFC 3339 time (new consumer)")
    p.add_argument("--core", action="store_true", help="core NATS subscription instead of JetStream")
    p.add_argument("--count", type=int, help="exit after this many events")
    p.add_argument("--out", help="append events as JSON lines here instead of printing")
    args = p.parse_args()

    nc = await nats.connect(args.url, max_reconnect_attempts=-1)
    seen = 0
    if args.core:
        done = asyncio.Event()

        async def on_message(msg):
            nonlocal seen
            record(msg, args.out)
            seen += 1
            if args.count and seen >= args.count:
                done.set()

        await nc.subscribe(args.subject, cb=on_message)
        print("subscribed", file=sys.stderr, flush=True)
        await done.wait()
    else:
        if not args.stream:
            p.error("--stream is required for JetStream")
        config = ConsumerConfig(durable_name=args.durable, filter_subject=args.subject)
        if args.start_seq is not None:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = args.start_seq
        elif args.start_time:
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = args.start_time
        js = nc.jetstream()
        sub = await js.pull_subscribe(args.subject, durable=args.durable, stream=args.stream, config=config)
        print("consuming", file=sys.stderr, flush=True)
        while not (args.count and seen >= args.count):
            try:
                messages = await sub.fetch(100, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for msg in messages:
                record(msg, args.out)
                await msg.ack()
                seen += 1
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
