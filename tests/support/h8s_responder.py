#!/usr/bin/env python3
"""An h8s responder on nats-py, as a workload behind the ingress would be: it
subscribes to --subject, records every request (subject, reply subject,
headers, body) to --out as JSON lines, and answers with the body reversed, an
`X-Echo: yes` header, and `X-H8S-Status` when the request asked for one with
`X-Want-Status`; with `X-Want-Bare` it answers only that status, no other
header and no body. A body of `slow` is answered after 5 s, `pause` after 0.5 s
(each on a task of its own, so one slow request holds up no other).

WebSocket frames (`h8s.ws.ws.>`) are answered on their inbox in upper case;
a frame `flood` is answered with 5,000 messages at once, `binary` with three
bytes that are not UTF-8 and `bin`. Control messages
(`h8s.control.ws.conn.*`) are recorded like requests."""
import argparse
import asyncio
import base64
import json

import nats

parser = argparse.ArgumentParser()
parser.add_argument("--nats", required=True)
parser.add_argument("--subject", default="h8s.>")
parser.add_argument("--out", required=True)
args = parser.parse_args()


async def main():
    nc = await nats.connect(args.nats, max_reconnect_attempts=-1, reconnect_time_wait=0.2)

    async def handle(msg):
        headers = dict(msg.headers or {})
        with open(args.out, "a") as f:
            f.write(json.dumps({
                "subject": msg.subject, "reply": msg.reply, "headers": headers,
                "body": base64.b64encode(msg.data).decode(),
            }) + "\n")
        if msg.data == b"slow":
            await asyncio.sleep(5)
        elif msg.data == b"pause":
            await asyncio.sleep(0.5)
        if "X-Want-Bare" in headers:
            await nc.publish(msg.reply, b"", headers={"X-H8S-Status": headers.get("X-Want-Status", "200")})
            return
        reply = {"X-Echo": "yes", "Content-Type": "application/octet-stream"}
        if "X-Want-Status" in headers:
            reply["X-H8S-Status"] = headers["X-Want-Status"]
        await nc.publish(msg.reply, msg.data[::-1], headers=reply)

    async def frame(msg):
        await handle_record(msg)
        if msg.data == b"flood":
            for i in range(5000):
                await nc.publish(msg.reply, b"x" * 1024)
        elif msg.data == b"binary":
            await nc.publish(msg.reply, b"\xff\x00bin")
        else:
            await nc.publish(msg.reply, msg.data.upper())

    async def handle_record(msg):
        with open(args.out, "a") as f:
            f.write(json.dumps({
                "subject": msg.subject, "reply": msg.reply, "headers": dict(msg.headers or {}),
                "body": base64.b64encode(msg.data).decode(),
            }) + "\n")

    tasks = set()

    async def spawn(msg):
        task = asyncio.create_task(handle(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    await nc.subscribe(args.subject, cb=spawn)
    await nc.subscribe("h8s.ws.ws.>", cb=frame)
    await nc.subscribe("h8s.control.ws.conn.*", cb=handle_record)
    await nc.flush()
    print("subscribed", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
