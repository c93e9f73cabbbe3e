#!/usr/bin/env python3
"""A tiny HTTP/1.1 TCP proxy on 127.0.0.1 that records every request line it forwards (one per line in LOG),
so the benchmark can count GET/HEAD/LIST requests a tool makes. Requests are parsed just enough to find
where each one ends on a keep-alive connection (Content-Length or chunked bodies); bytes pass unchanged,
so SigV4 signatures (which cover the Host header) still verify upstream. Responses are piped through raw.
Used only for the untimed counting runs: a Python proxy would distort the timings.

    countproxy.py LISTEN_PORT UPSTREAM_PORT LOG
"""
import asyncio
import sys

LISTEN, UPSTREAM, LOG = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
log = open(LOG, "ab", buffering=0)


async def pipe(reader, writer):
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def relay_exact(reader, writer, n):
    while n > 0:
        chunk = await reader.readexactly(min(n, 1 << 16))
        writer.write(chunk)
        await writer.drain()
        n -= len(chunk)


async def handle(creader, cwriter):
    try:
        sreader, swriter = await asyncio.open_connection("127.0.0.1", UPSTREAM, limit=1 << 20)
    except OSError:
        cwriter.close()
        return
    responses = asyncio.create_task(pipe(sreader, cwriter))
    try:
        while True:
            head = await creader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            log.write(lines[0] + b"\n")
            length, chunked = 0, False
            for h in lines[1:]:
                name, _, value = h.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value.strip())
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            swriter.write(head)
            if chunked:
                while True:
                    size_line = await creader.readuntil(b"\r\n")
                    swriter.write(size_line)
                    n = int(size_line.split(b";")[0].strip(), 16)
                    if n == 0:
                        while (trailer := await creader.readuntil(b"\r\n")) != b"\r\n":
                            swriter.write(trailer)
                        swriter.write(b"\r\n")
                        break
                    await relay_exact(creader, swriter, n + 2)
            elif length:
                await relay_exact(creader, swriter, length)
            await swriter.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        try:
            swriter.close()
        except Exception:
            pass
        try:
            await asyncio.wait_for(responses, 30)
        except Exception:
            responses.cancel()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", LISTEN, limit=1 << 20)
    async with server:
        await server.serve_forever()


asyncio.run(main())
