#!/usr/bin/env python3
"""Opens N keep-alive client connections to 127.0.0.1:PORT, sends one GET on each, reads
each whole answer, then holds them all idle: prints "ready N" on stdout and waits (at
most HOLD seconds, or until stdin closes) before closing them.

    idle.py PORT N [HOLD]

Used by run.sh to measure the memory a proxy spends per idle client connection.
"""
import asyncio
import sys

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


async def one(port, held):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    held.append(writer)


async def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    hold = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
    held = []
    # Batches, so the listen backlog never overflows.
    for start in range(0, n, 200):
        batch = [one(port, held) for _ in range(start, min(n, start + 200))]
        await asyncio.wait_for(asyncio.gather(*batch), timeout=60)
    print(f"ready {len(held)}", flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    try:
        await asyncio.wait_for(stdin_closed, timeout=hold)
    except asyncio.TimeoutError:
        pass
    for w in held:
        w.close()


asyncio.run(main())
