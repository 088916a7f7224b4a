"""A real gRPC server (Python grpcio) for tests/it/grpc.rs, without generated code: the
methods of service `test.Echo` take and return raw bytes.

- Echo (unary): returns the request.
- Fail (unary): fails with FAILED_PRECONDITION, details "nope", trailer x-detail: why.
- Chat (bidi streaming): answers each message with b"echo:" + message, as it arrives.
- Slow (unary): waits until the call is cancelled (or 10 s), counting cancels it saw.
- Cancels (unary): how many Slow calls ended cancelled, as ASCII digits.

Binds 127.0.0.1:0 and prints "PORT <n>" on stdout once serving.
"""

import sys
import threading
import time
from concurrent import futures

import grpc

cancels = 0
lock = threading.Lock()


def echo(request, context):
    return request


def fail(request, context):
    context.set_trailing_metadata((("x-detail", "why"),))
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "nope")


def chat(requests, context):
    for r in requests:
        yield b"echo:" + r


def slow(request, context):
    global cancels
    seen = threading.Event()

    def on_done():
        seen.set()

    context.add_callback(on_done)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not seen.is_set():
        seen.wait(0.05)
    if not context.is_active():
        with lock:
            cancels += 1
    return b"late"


def count(request, context):
    with lock:
        return str(cancels).encode()


def ident(b):
    return b


def main():
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo, ident, ident),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, ident, ident),
        "Chat": grpc.stream_stream_rpc_method_handler(chat, ident, ident),
        "Slow": grpc.unary_unary_rpc_method_handler(slow, ident, ident),
        "Cancels": grpc.unary_unary_rpc_method_handler(count, ident, ident),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    # until the test closes our stdin (or kills us)
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
