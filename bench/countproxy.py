#!/usr/bin/env python3
"""A tiny HTTP/1.1 TCP proxy on 127.0.0.1 that records every request line it forwards (one per line in LOG),
so the benchmark can count GET/HEAD/LIST requests a tool makes. Requests are parsed just enough to find
where each one ends on a keep-alive connection (Content-Length or chunked bodies); bytes pass unchanged,
so SigV4 signatures (which cover the Host header) still verify upstream. Responses are piped through raw.
Used only for the untimed counting runs: a Python proxy would distort the timings.

With --corrupt-first-get, responses are parsed too, and the body of the first successful GET of each object
key (200 or 206, so one part or range of a multipart object) gets one byte flipped in its middle; later GETs
of the key pass unchanged, so a tool that notices and fetches again ends with the right bytes. Each flip
is logged as "CORRUPTED <key>". That is benchmark scenario V: which tools notice a corrupted download.

With --list-delay-ms MS, each ListObjectsV2 request (a GET of the bucket itself) is held MS milliseconds
before it is forwarded, and with --get-delay-ms MS each other request (object GETs, HEADs): the first byte
of the answer comes that much later, as it does from S3 (100-300 ms a LIST page). That is benchmark scenario
L: listing at S3's latency. The tests have a Rust proxy of their own (tests/common/latency.rs).

    countproxy.py LISTEN_PORT UPSTREAM_PORT LOG [--corrupt-first-get] [--list-delay-ms MS] [--get-delay-ms MS]
"""
import asyncio
import sys
import urllib.parse

LISTEN, UPSTREAM, LOG = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
CORRUPT = "--corrupt-first-get" in sys.argv[4:]


def flag_ms(name):
    rest = sys.argv[4:]
    return float(rest[rest.index(name) + 1]) / 1000 if name in rest else 0.0


LIST_DELAY, GET_DELAY = flag_ms("--list-delay-ms"), flag_ms("--get-delay-ms")
log = open(LOG, "ab", buffering=0)
corrupted = set()


def close_quietly(writer):
    try:
        writer.close()
    except Exception:
        pass


async def pipe(reader, writer):
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        close_quietly(writer)


async def relay_exact(reader, writer, n):
    while n > 0:
        chunk = await reader.readexactly(min(n, 1 << 16))
        writer.write(chunk)
        await writer.drain()
        n -= len(chunk)


def framing(lines):
    """(Content-Length or None, chunked?) from a header block's lines."""
    length, chunked = None, False
    for h in lines[1:]:
        name, _, value = h.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    return length, chunked


async def relay_chunked(reader, writer, flip=False):
    """Relay a chunked body; with flip, one byte in the middle of its first non-empty chunk is flipped.
    Returns whether a byte was flipped."""
    flipped = False
    while True:
        size_line = await reader.readuntil(b"\r\n")
        writer.write(size_line)
        n = int(size_line.split(b";")[0].strip(), 16)
        if n == 0:
            while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                writer.write(trailer)
            writer.write(b"\r\n")
            return flipped
        data = await reader.readexactly(n + 2)
        if flip and not flipped:
            data = bytearray(data)
            data[n // 2] ^= 0x01
            flipped = True
        writer.write(data)
        await writer.drain()


def is_list(request_line):
    """A GET of the bucket itself (path-style /bucket?list-type=2...): a listing."""
    parts = request_line.decode("latin-1").split()
    if len(parts) < 2 or parts[0] != "GET":
        return False
    path = urllib.parse.urlsplit(parts[1]).path.strip("/")
    return "/" not in path


def object_key(request_line):
    """The key of a GET of an object (path-style /bucket/key), else None (listings, other methods)."""
    parts = request_line.decode("latin-1").split()
    if len(parts) < 2 or parts[0] != "GET":
        return None
    _, _, key = urllib.parse.unquote(urllib.parse.urlsplit(parts[1]).path).lstrip("/").partition("/")
    return key or None


async def corrupt_responses(reader, writer, asked):
    """Relay responses one by one (each answers the oldest request still open), flipping a byte as above."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split()[1])
            writer.write(head)
            if 100 <= status < 200:
                continue  # an interim response: the final one follows for the same request
            request = await asked.get()
            length, chunked = framing(lines)
            if request.startswith(b"HEAD ") or status in (204, 304):
                await writer.drain()
                continue
            key = object_key(request)
            flip = status in (200, 206) and key is not None and key not in corrupted
            if flip:
                corrupted.add(key)  # now, before any await: parts of one key answer concurrently
            if chunked:
                if await relay_chunked(reader, writer, flip):
                    log.write(b"CORRUPTED " + key.encode() + b"\n")
            elif length is not None:
                if flip and length > 0:
                    await relay_exact(reader, writer, length // 2)
                    byte = await reader.readexactly(1)
                    writer.write(bytes([byte[0] ^ 0x01]))
                    log.write(b"CORRUPTED " + key.encode() + b"\n")
                    await relay_exact(reader, writer, length - length // 2 - 1)
                else:
                    await relay_exact(reader, writer, length)
            else:
                await pipe(reader, writer)  # the body runs to the end of the connection
                return
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
        pass
    finally:
        close_quietly(writer)


async def handle(creader, cwriter):
    try:
        sreader, swriter = await asyncio.open_connection("127.0.0.1", UPSTREAM, limit=1 << 20)
    except OSError:
        cwriter.close()
        return
    asked = asyncio.Queue()
    responses = asyncio.create_task(corrupt_responses(sreader, cwriter, asked) if CORRUPT
                                    else pipe(sreader, cwriter))
    try:
        while True:
            head = await creader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            log.write(lines[0] + b"\n")
            delay = LIST_DELAY if is_list(lines[0]) else GET_DELAY
            if delay:
                # Before forwarding: the client sends its next request on this connection only after
                # this answer, so holding the request delays exactly this answer's first byte.
                await asyncio.sleep(delay)
            asked.put_nowait(lines[0])
            length, chunked = framing(lines)
            swriter.write(head)
            if chunked:
                await relay_chunked(creader, swriter)
            elif length:
                await relay_exact(creader, swriter, length)
            await swriter.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        close_quietly(swriter)
        try:
            await asyncio.wait_for(responses, 30)
        except Exception:
            responses.cancel()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", LISTEN, limit=1 << 20)
    async with server:
        await server.serve_forever()


asyncio.run(main())
