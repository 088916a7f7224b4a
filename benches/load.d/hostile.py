#!/usr/bin/env python3
"""Hostile clients for benches/soak, beside the well-behaved ones (stdlib only).

usage: hostile.py HOST HTTP_PORT TLS_PORT SECONDS [--header-timeout S]

For SECONDS it keeps up, against one Stepstone with default limits:

  slowloris   32 connections that send a request head one header line a second; the proxy
              must end each within the header-read timeout (default 10 s) and a margin
  silent      16 connections that send nothing; the same bound, plus the second the kernel
              holds a silent client (defer_accept)
  and, about five times a second, one each of these on a new connection, every one of which
  must get the answer named (or, where noted, be closed without a 2xx):
  smuggle     Content-Length and Transfer-Encoding together                   400
  two-cl      two different Content-Length fields                             400
  big-head    a 40 KiB header field (the limit is 32 KiB)                     431 or 400
  many        150 header fields (the limit is 100)                            431 or 400
  garbage     a request line that is not one                                  400
  bad-chunk   a chunked body whose size line is not hex                       400, or closed
  too-big     a Content-Length over max_body_size (16 MiB)                    413
  obs-fold    a folded header line                                            400
  bare-lf     lines ended by LF alone                                         400
  trace       TRACE (cross-site tracing)                                      405
  above-root  a path that climbs above the root (/../ok)                      400
  bad-host    a Host that is not host[:port] (soak.test/x)                    400
  reset       HTTP/2 over TLS: 500 streams, each reset as it opens (CVE-2023-44487);
              the proxy must end the connection (GOAWAY or close) within 5 s

Prints one line per kind, `KIND tries ok wrong max_seconds`, then `WRONG n`; on a wrong
answer also `EXAMPLE KIND what happened`. Exit status 1 if any answer was wrong.
"""
import asyncio
import ssl
import struct
import sys
import time

HOST = sys.argv[1] if len(sys.argv) > 4 else ""
if not HOST:
    sys.exit(__doc__)
HTTP_PORT, TLS_PORT, SECONDS = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
HEADER_TIMEOUT = 10.0
if "--header-timeout" in sys.argv:
    HEADER_TIMEOUT = float(sys.argv[sys.argv.index("--header-timeout") + 1])
MARGIN = 3.0  # a timer wheel's tick, the scheduler, this client's own loop
HOLD = 1.0  # the kernel holds a silent client for a second first (defer_accept)

stats = {}
examples = {}
deadline = time.monotonic() + SECONDS


def tally(kind, ok, what="", held=0.0):
    s = stats.setdefault(kind, [0, 0, 0, 0.0])
    s[0] += 1
    s[1 if ok else 2] += 1
    s[3] = max(s[3], held)
    if not ok and kind not in examples:
        examples[kind] = what


async def read_status(reader, timeout):
    """The status code of the first response, or None if the connection closed first."""
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (asyncio.TimeoutError, ConnectionError):
        return "timeout"
    if not line:
        return None
    parts = line.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else line[:40]


async def one_shot(kind, payload, want, closed_ok=False):
    try:
        r, w = await asyncio.open_connection(HOST, HTTP_PORT)
    except OSError as e:
        tally(kind, False, f"connect: {e}")
        return
    try:
        w.write(payload)
        await w.drain()
        got = await read_status(r, 5.0)
    except ConnectionError:
        got = None
    finally:
        w.close()
    ok = got in want or (got is None and closed_ok)
    tally(kind, ok, f"answered {got!r}, wanted {sorted(want)}")


async def held_until_closed(kind, drip):
    """Open a connection, send the request head a line at a time (drip) or nothing, and
    measure how long the proxy keeps it."""
    try:
        r, w = await asyncio.open_connection(HOST, HTTP_PORT)
    except OSError as e:
        tally(kind, False, f"connect: {e}")
        await asyncio.sleep(1)
        return
    t0 = time.monotonic()
    limit = HEADER_TIMEOUT + MARGIN + (0 if drip else HOLD)
    closed = False
    try:
        if drip:
            w.write(b"GET /ok HTTP/1.1\r\nHost: soak.test\r\n")
        n = 0
        while time.monotonic() - t0 < limit:
            try:
                data = await asyncio.wait_for(r.read(4096), 1.0)
                if not data:
                    closed = True
                    break
                # a 408 before the close is fine; keep reading to the close
                continue
            except asyncio.TimeoutError:
                pass
            if drip:
                n += 1
                w.write(b"X-Drip-%d: x\r\n" % n)
                await w.drain()
    except ConnectionError:
        closed = True
    finally:
        w.close()
    held = time.monotonic() - t0
    tally(kind, closed, f"still open after {held:.1f} s", held)


async def pool(kind, n, drip):
    async def one():
        while time.monotonic() < deadline - HEADER_TIMEOUT - MARGIN - HOLD:
            await held_until_closed(kind, drip)

    await asyncio.gather(*(one() for _ in range(n)))


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


async def rapid_reset():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        r, w = await asyncio.open_connection(HOST, TLS_PORT, ssl=ctx)
    except OSError as e:
        tally("reset", False, f"connect: {e}")
        return
    if w.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
        tally("reset", False, "no h2 by ALPN")
        w.close()
        return
    # :method GET, :scheme https, :path /ok (literal), :authority soak.test
    block = b"\x82\x87\x04\x03/ok\x01\x09soak.test"
    out = [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", frame(4, 0, 0)]
    for i in range(500):
        sid = 1 + 2 * i
        out.append(frame(1, 0x5, sid, block))
        out.append(frame(3, 0, sid, struct.pack(">I", 8)))
    t0 = time.monotonic()
    ended = False
    try:
        w.write(b"".join(out))
        await w.drain()
        buf = b""
        while time.monotonic() - t0 < 5.0:
            data = await asyncio.wait_for(r.read(65536), 5.0)
            if not data:
                ended = True
                break
            buf += data
            # look for a GOAWAY frame (type 7) among whole frames
            i = 0
            while len(buf) - i >= 9:
                ln = int.from_bytes(buf[i:i + 3], "big")
                if buf[i + 3] == 7:
                    ended = True
                    break
                i += 9 + ln
            buf = buf[i:]
            if ended:
                break
    except (asyncio.TimeoutError, ConnectionError, ssl.SSLError):
        ended = ended or time.monotonic() - t0 < 5.0
    finally:
        w.close()
    tally("reset", ended, "the connection went on after 500 streams reset as they opened",
          time.monotonic() - t0)


SHOTS = [
    ("smuggle", b"POST /post HTTP/1.1\r\nHost: soak.test\r\nContent-Length: 5\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400}, False),
    ("two-cl", b"POST /post HTTP/1.1\r\nHost: soak.test\r\nContent-Length: 5\r\n"
               b"Content-Length: 6\r\n\r\nhello!", {400}, False),
    ("big-head", b"GET /ok HTTP/1.1\r\nHost: soak.test\r\nX-Big: " + b"a" * 40960 + b"\r\n\r\n",
     {431, 400}, False),
    ("many", b"GET /ok HTTP/1.1\r\nHost: soak.test\r\n"
             + b"".join(b"X-F%d: v\r\n" % i for i in range(150)) + b"\r\n", {431, 400}, False),
    ("garbage", b"G\x01T /ok HTTP/1.1\r\nHost: soak.test\r\n\r\n", {400}, False),
    ("bad-chunk", b"POST /post HTTP/1.1\r\nHost: soak.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"zz\r\nhello\r\n0\r\n\r\n", {400}, True),
    ("too-big", b"POST /post HTTP/1.1\r\nHost: soak.test\r\nContent-Length: 20000000\r\n\r\n",
     {413}, False),
    ("obs-fold", b"GET /ok HTTP/1.1\r\nHost: soak.test\r\nX-A: b\r\n  folded\r\n\r\n", {400}, False),
    ("bare-lf", b"GET /ok HTTP/1.1\nHost: soak.test\n\n", {400}, False),
    ("trace", b"TRACE /ok HTTP/1.1\r\nHost: soak.test\r\n\r\n", {405}, False),
    ("above-root", b"GET /../ok HTTP/1.1\r\nHost: soak.test\r\n\r\n", {400}, False),
    ("bad-host", b"GET /ok HTTP/1.1\r\nHost: soak.test/x\r\n\r\n", {400}, False),
]


async def shots():
    while time.monotonic() < deadline:
        t = time.monotonic()
        await asyncio.gather(*(one_shot(k, p, want, c) for k, p, want, c in SHOTS), rapid_reset())
        await asyncio.sleep(max(0.0, 0.2 - (time.monotonic() - t)))


async def main():
    await asyncio.gather(pool("slowloris", 32, True), pool("silent", 16, False), shots())


asyncio.run(main())
wrong = 0
for kind, (tries, ok, bad, held) in sorted(stats.items()):
    print(f"{kind} {tries} {ok} {bad} {held:.1f}")
    wrong += bad
for kind, what in sorted(examples.items()):
    print(f"EXAMPLE {kind} {what}")
print(f"WRONG {wrong}")
sys.exit(1 if wrong else 0)
