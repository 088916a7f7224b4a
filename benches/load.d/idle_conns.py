#!/usr/bin/env python3
"""Hold N idle HTTP/1.1 keep-alive connections open against a proxy (stdlib only).

usage: idle_conns.py HOST PORT N [PATH]

Opens N connections, sends one `GET PATH` with keep-alive on each and reads the full response,
so that every connection has gone through a request and sits idle in the proxy's keep-alive
state. Then prints `READY <n>` and waits for SIGUSR1 (or SIGTERM, or 300 s). On SIGUSR1 it
counts the connections the proxy still has open, prints `ALIVE <n>` and exits (closing them).
Exit status 1 with `ERROR ...` on stdout if any connection or request fails.
"""
import errno
import resource
import signal
import socket
import sys
import time

BATCH = 256  # connections opened before their responses are read (stays below listen backlogs)


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


def main():
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    path = sys.argv[4] if len(sys.argv) > 4 else "/ok"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 64)), hard))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM, signal.SIGINT})
    req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: keep-alive\r\n\r\n".encode()
    socks = []
    t0 = time.monotonic()
    try:
        while len(socks) < n:
            batch = []
            for _ in range(min(BATCH, n - len(socks))):
                s = socket.create_connection((host, port), timeout=10)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(req)
                batch.append(s)
            for s in batch:
                status = read_response(s)
                if not 200 <= status < 300:
                    raise ConnectionError(f"status {status}")
            socks.extend(batch)
    except (OSError, ConnectionError, ValueError, IndexError) as e:
        print(f"ERROR after {len(socks)} connections: {e!r}", flush=True)
        return 1
    print(f"READY {len(socks)} {time.monotonic() - t0:.2f}s", flush=True)

    signal.sigtimedwait({signal.SIGUSR1, signal.SIGTERM, signal.SIGINT}, 300)

    alive = 0
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(1, socket.MSG_PEEK)
            if data:
                alive += 1  # unexpected bytes, but still open
        except BlockingIOError:
            alive += 1
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                alive += 1
    print(f"ALIVE {alive}", flush=True)
    for s in socks:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
