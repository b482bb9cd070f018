#!/usr/bin/env python3
"""Sends exactly N keep-alive GET requests over C connections to 127.0.0.1:PORT (N / C
in turn on each), checks that every answer is 200, and prints "done N SECONDS". On a
failure it prints "error ..." instead and exits 1.

    count.py [--host HOST] PORT C N

Used by run.sh's instruction count: a load bounded in requests, not time, so that
callgrind's total over it divided by N is the cost of one request.
"""
import argparse
import asyncio
import sys
import time

from idle import read_answer


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="bench", help="Host header [bench]")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="seconds the whole load may take [600]")
    ap.add_argument("port", type=int)
    ap.add_argument("c", type=int)
    ap.add_argument("n", type=int)
    args = ap.parse_args()
    if args.c <= 0 or args.n < args.c:
        print("error: need 0 < C <= N", flush=True)
        return 1
    request = f"GET / HTTP/1.1\r\nHost: {args.host}\r\n\r\n".encode()
    # The first n % c connections send one request more.
    shares = [args.n // args.c + (1 if i < args.n % args.c else 0) for i in range(args.c)]

    async def client(k):
        reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        try:
            for _ in range(k):
                writer.write(request)
                await read_answer(reader)
        finally:
            writer.close()

    start = time.monotonic()
    try:
        await asyncio.wait_for(asyncio.gather(*(client(k) for k in shares)), args.timeout)
    except Exception as e:  # noqa: BLE001 - any failure is reported, not raised
        print(f"error {type(e).__name__}: {e}", flush=True)
        return 1
    print(f"done {args.n} {time.monotonic() - start:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
