#!/usr/bin/env python3
"""Opens N keep-alive client connections to 127.0.0.1:PORT, sends one GET on each, reads
each whole answer, then holds them all idle: prints "ready N" on stdout and holds them
until SIGTERM or SIGINT (or HOLD seconds), then closes them and exits. On a failure it
prints "error ..." instead and exits 1.

    idle.py [--host HOST] [--together] PORT N [HOLD]

Default: connections go in batches of 200, each batch connected, asked and answered
before the next (the listen backlog never overflows), to measure idle client
connections. --together: all N are connected first (in batches), then all N requests
are sent at once and all answers awaited, so that a proxy in front of a slow backend
(slowbackend.py) has N requests in flight and opens about N upstream connections.

Used by run.sh to measure the memory a proxy spends per idle client connection and per
idle upstream connection.
"""
import argparse
import asyncio
import signal
import sys

BATCH = 200


async def read_answer(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if status.split(b" ")[1:2] != [b"200"]:
        raise RuntimeError(f"answer {status!r}")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="bench", help="Host header [bench]")
    ap.add_argument("--together", action="store_true",
                    help="all requests in flight at once (after all connections are open)")
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds each step (a batch, or all answers) may take [60]")
    ap.add_argument("port", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("hold", type=float, nargs="?", default=60.0)
    args = ap.parse_args()
    request = f"GET / HTTP/1.1\r\nHost: {args.host}\r\n\r\n".encode()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def connect():
        return await asyncio.open_connection("127.0.0.1", args.port)

    async def ask(conn):
        reader, writer = conn
        writer.write(request)
        await writer.drain()
        await read_answer(reader)
        return conn

    async def connect_and_ask():
        return await ask(await connect())

    held = []
    try:
        if args.together:
            for start in range(0, args.n, BATCH):
                batch = [connect() for _ in range(start, min(args.n, start + BATCH))]
                held += await asyncio.wait_for(asyncio.gather(*batch), timeout=args.timeout)
            await asyncio.wait_for(asyncio.gather(*(ask(c) for c in held)), timeout=args.timeout)
        else:
            for start in range(0, args.n, BATCH):
                batch = [connect_and_ask() for _ in range(start, min(args.n, start + BATCH))]
                held += await asyncio.wait_for(asyncio.gather(*batch), timeout=args.timeout)
    except Exception as e:  # noqa: BLE001 - reported to run.sh, which gives up on this measure
        print(f"error after {len(held)} connections: {type(e).__name__}: {e}", flush=True)
        sys.exit(1)
    print(f"ready {len(held)}", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.hold)
    except asyncio.TimeoutError:
        pass
    for _, w in held:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
