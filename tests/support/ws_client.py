#!/usr/bin/env python3
"""A WebSocket client for the ingress tests, on the `websockets` library. Modes:
`echo` sends three frames and prints the replies; `binary` asks for a reply
that is not UTF-8 and prints its frame's type and bytes; `slow` asks for a flood and
then does not read for a while, and prints how the connection was closed;
`hold` connects and waits to be closed, printing the close code; `idleN`
sends nothing at all (no pings either) for N seconds, then echoes one frame;
`bigN` sends
one frame of N bytes and prints how the connection was closed; `manyN`
opens N connections at once and checks each gets its own replies. The host is
sent as X-Forwarded-Host (the library sets Host itself). Prints one
JSON line."""
import asyncio
import json
import sys

import websockets

url, host, mode = sys.argv[1], sys.argv[2], sys.argv[3]


async def main():
    async with websockets.connect(url, additional_headers={"X-Forwarded-Host": host},
                                  max_queue=1, max_size=2**20, ping_interval=None) as ws:
        if mode == "echo":
            got = []
            for word in ["one", "two", "three"]:
                await ws.send(word)
                got.append(await asyncio.wait_for(ws.recv(), 5))
            print(json.dumps({"replies": got}))
        elif mode == "binary":
            await ws.send("binary")
            got = await asyncio.wait_for(ws.recv(), 5)
            print(json.dumps({"type": type(got).__name__,
                              "hex": got.hex() if isinstance(got, bytes) else None}))
        elif mode == "slow":
            await ws.send("flood")
            await asyncio.sleep(4)
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed as e:
                print(json.dumps({"code": e.rcvd.code if e.rcvd else None}))
        elif mode.startswith("idle"):
            await asyncio.sleep(float(mode[4:]))
            try:
                await ws.send("after")
                print(json.dumps({"reply": await asyncio.wait_for(ws.recv(), 5)}))
            except websockets.ConnectionClosed as e:
                print(json.dumps({"code": e.rcvd.code if e.rcvd else None}))
        elif mode.startswith("big"):
            await ws.send("b" * int(mode[3:]))
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed as e:
                print(json.dumps({"code": e.rcvd.code if e.rcvd else None}))
        elif mode.startswith("many"):
            pass
        elif mode == "hold":
            print(json.dumps({"open": True}), flush=True)
            try:
                await asyncio.wait_for(ws.recv(), 30)
            except websockets.ConnectionClosed as e:
                print(json.dumps({"code": e.rcvd.code if e.rcvd else None}))


async def many(n):
    """n connections at once, each echoing its own words."""
    async def one(i):
        async with websockets.connect(url, additional_headers={"X-Forwarded-Host": host}) as ws:
            got = []
            for j in range(3):
                await ws.send(f"c{i}w{j}")
                got.append(await asyncio.wait_for(ws.recv(), 10))
            return got == [f"C{i}W{j}" for j in range(3)]
    results = await asyncio.gather(*(one(i) for i in range(n)))
    print(json.dumps({"ok": sum(results), "of": n}))


if mode.startswith("many"):
    asyncio.run(many(int(mode[4:])))
else:
    asyncio.run(main())
