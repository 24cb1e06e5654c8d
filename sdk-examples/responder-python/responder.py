#!/usr/bin/env python3
"""A workload behind the ingress, in Python on nats-py: it needs no inbound
network, only NATS. It answers every HTTP request the ingress puts on
`h8s.http.*.<reversed host>.>` with JSON naming the method and path, and sets
the status with the X-H8S-Status header."""
import asyncio
import json
import os

import nats

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
# Requests for any path of hello.example.com: the host is reversed by labels.
SUBJECT = os.environ.get("H8S_SUBJECT", "h8s.http.*.com.example.hello.>")


async def main():
    nc = await nats.connect(NATS_URL, max_reconnect_attempts=-1)

    async def answer(msg):
        tokens = msg.subject.split(".")
        body = {"method": tokens[2], "path": tokens[6:], "from": "python"}
        await nc.publish(msg.reply, json.dumps(body).encode(),
                         headers={"Content-Type": "application/json", "X-H8S-Status": "200"})

    await nc.subscribe(SUBJECT, queue="hello", cb=answer)
    print(f"answering {SUBJECT}", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
