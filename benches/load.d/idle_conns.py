#!/usr/bin/env python3
"""Hold N idle HTTP/1.1 keep-alive connections open against a proxy (stdlib only).

usage: idle_conns.py HOST PORT N [PATH] [--mode batch|one|burst] [--pid PID] [--settle S] [--tls]

Opens N connections, sends one `GET PATH` with keep-alive on each and reads the full response,
so that every connection has gone through a request and sits idle in the proxy's keep-alive
state. How the requests arrive (`--mode`):

  batch  256 connections opened and their requests sent before the responses are read (default)
  one    one by one: connect, request, response, then the next connection
  burst  all N connections opened first, then every request sent, then every response read,
         so that the proxy serves up to N requests at once

With `--pid`, the proxy's RSS (VmRSS of PID and its descendants) is read before the first
connection and again `--settle` seconds (default 1) after the last response, and printed as
`RSS <before_kb> <after_kb> <kb_per_conn>`.

With `--tls`, each connection does a TLS handshake first (ALPN http/1.1, the certificate not
verified), so the connections held are idle HTTPS keep-alive connections.

Then prints `READY <n> <seconds>s` and waits for SIGUSR1 (or SIGTERM, or 300 s). On SIGUSR1 it
counts the connections the proxy still has open, prints `ALIVE <n>` and exits (closing them).
Exit status 1 with `ERROR ...` on stdout if any connection or request fails.

Past about 25,000 connections to one address the loopback's ephemeral ports run out, so
connections beyond each 25,000 are bound to the next source address (127.0.0.2, ...). The
open-file limit is raised to N + 64 where the hard limit allows; beyond it the run fails with
an error naming the limit.
"""
import errno
import os
import resource
import signal
import socket
import ssl
import sys
import time

BATCH = 256  # connections opened before their responses are read (stays below listen backlogs)
PER_SOURCE = 25000  # connections per loopback source address


def read_response(sock):
    """Read one HTTP/1.1 response; return the status code."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before response headers")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip().lower()
    if b"content-length" in headers:
        need = int(headers[b"content-length"])
        while len(body) < need:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in response body")
            body += chunk
    elif headers.get(b"transfer-encoding") == b"chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in chunked body")
            body += chunk
    if headers.get(b"connection") == b"close":
        raise ConnectionError("server answered Connection: close")
    return status


def rss_kb(pid):
    """VmRSS of pid and all its descendants, in KB."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return total


def connect(host, port, i, tls=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if host.startswith("127.") and i >= PER_SOURCE:
        s.bind((f"127.0.0.{1 + i // PER_SOURCE}", 0))
    s.settimeout(30)
    s.connect((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is not None:
        s = tls.wrap_socket(s, server_hostname=host)
    return s


def client_tls():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def still_open(s):
    """Whether the proxy has kept `s` open: nothing to read and no EOF (peeked on the raw
    socket, under TLS too)."""
    raw = socket.socket(fileno=os.dup(s.fileno()))
    raw.setblocking(False)
    try:
        return bool(raw.recv(1, socket.MSG_PEEK))  # unexpected bytes, but still open
    except (BlockingIOError, InterruptedError):
        return True
    except OSError as e:
        return e.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
    finally:
        raw.close()


def check(status):
    if not 200 <= status < 300:
        raise ConnectionError(f"status {status}")


def main():
    args = sys.argv[1:]
    opts = {"--mode": "batch", "--pid": None, "--settle": "1"}
    pos = []
    tls = None
    while args:
        a = args.pop(0)
        if a == "--tls":
            tls = client_tls()
        elif a in opts:
            if not args:
                print(f"ERROR {a} needs a value", flush=True)
                return 2
            opts[a] = args.pop(0)
        else:
            pos.append(a)
    if len(pos) < 3 or opts["--mode"] not in ("batch", "one", "burst"):
        print(__doc__, file=sys.stderr)
        return 2
    host, port, n = pos[0], int(pos[1]), int(pos[2])
    path = pos[3] if len(pos) > 3 else "/ok"
    mode = opts["--mode"]
    pid = int(opts["--pid"]) if opts["--pid"] else None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 64)), hard))
    if hard < n + 64:
        print(f"ERROR open-file hard limit {hard} is below {n} connections + 64", flush=True)
        return 1
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM, signal.SIGINT})
    req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: keep-alive\r\n\r\n".encode()
    before = rss_kb(pid) if pid else 0
    socks = []
    t0 = time.monotonic()
    try:
        if mode == "one":
            while len(socks) < n:
                s = connect(host, port, len(socks), tls)
                s.sendall(req)
                check(read_response(s))
                socks.append(s)
        elif mode == "burst":
            while len(socks) < n:
                socks.append(connect(host, port, len(socks), tls))
            for s in socks:
                s.sendall(req)
            for s in socks:
                check(read_response(s))
        else:
            while len(socks) < n:
                batch = []
                for _ in range(min(BATCH, n - len(socks))):
                    s = connect(host, port, len(socks) + len(batch), tls)
                    s.sendall(req)
                    batch.append(s)
                for s in batch:
                    check(read_response(s))
                socks.extend(batch)
    except (OSError, ConnectionError, ValueError, IndexError, ssl.SSLError) as e:
        print(f"ERROR after {len(socks)} connections: {e!r}", flush=True)
        return 1
    took = time.monotonic() - t0
    if pid:
        time.sleep(float(opts["--settle"]))
        after = rss_kb(pid)
        print(f"RSS {before} {after} {(after - before) / max(n, 1):.2f}", flush=True)
    print(f"READY {len(socks)} {took:.2f}s", flush=True)

    signal.sigtimedwait({signal.SIGUSR1, signal.SIGTERM, signal.SIGINT}, 300)

    alive = sum(1 for s in socks if still_open(s))
    print(f"ALIVE {alive}", flush=True)
    for s in socks:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
