#!/usr/bin/env python3
"""A WebSocket client for the ingress tests, on the `websockets` library. Modes:
`echo` sends three frames and prints the replies; `slow` asks for a flood and
then does not read for a while, and prints how the connection was closed;
`hold` connects and waits to be closed, printing the close code. The host is
sent as X-Forwarded-Host (the library sets Host itself). Prints one
JSON line."""
import asyncio
import json
import sys

import websockets

url, host, mode = sys.argv[1], sys.argv[2], sys.argv[3]


async def main():
    async with websockets.connect(url, additional_headers={"X-Forwarded-Host": host},
                                  max_queue=1, max_size=2**20) as ws:
        if mode == "echo":
            got = []
            for word in ["one", "two", "three"]:
                await ws.send(word)
                got.append(await asyncio.wait_for(ws.recv(), 5))
            print(json.dumps({"replies": got}))
        elif mode == "slow":
            await ws.send("flood")
            await asyncio.sleep(4)
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed as e:
                print(json.dumps({"code": e.rcvd.code if e.rcvd else None}))
        elif mode == "hold":
            print(json.dumps({"open": True}), flush=True)
            try:
                await asyncio.wait_for(ws.recv(), 30)
            except websockets.ConnectionClosed as e:
                print(json.dumps({"code": e.rcvd.code if e.rcvd else None}))


asyncio.run(main())
