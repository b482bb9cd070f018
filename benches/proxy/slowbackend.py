#!/usr/bin/env python3
"""A slow HTTP/1.1 backend: listens on 127.0.0.1:PORT for each PORT given and answers
every request with `200 OK` and `ok\\n` (keep-alive) after DELAY seconds, on any number
of connections at once. Runs until SIGTERM or SIGINT.

    slowbackend.py [--delay SECONDS] PORT...

Used by run.sh to make a proxy hold many upstream connections at once (one per request
in flight), which then stay in its pool, idle: the memory of idle upstream connections.
"""
import argparse
import asyncio
import signal

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n"
CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nok\n"
MAX_HEAD = 65536


async def serve(reader, writer, delay):
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                return
            except asyncio.IncompleteReadError:
                return  # the peer closed the connection, idle or mid-head
            lines = head.split(b"\r\n")
            length, close = 0, lines[0].endswith(b"HTTP/1.0")
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value.strip())
                elif name == b"connection":
                    v = value.strip().lower()
                    close = v == b"close" or (close and v != b"keep-alive")
            if length:
                await reader.readexactly(length)
            await asyncio.sleep(delay)
            writer.write(CLOSE if close else RESPONSE)
            await writer.drain()
            if close:
                return
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        return
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delay", type=float, default=2.0, help="seconds before each answer")
    ap.add_argument("ports", type=int, nargs="+")
    args = ap.parse_args()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers = []
    # In the order given: once the last port accepts, they all do (run.sh waits on it).
    for port in args.ports:
        servers.append(await asyncio.start_server(
            lambda r, w: serve(r, w, args.delay), "127.0.0.1", port,
            backlog=4096, reuse_address=True, limit=MAX_HEAD))
    print(f"slow backend on {' '.join(map(str, args.ports))}, {args.delay} s per answer", flush=True)
    await stop.wait()
    for s in servers:
        s.close()


asyncio.run(main())
