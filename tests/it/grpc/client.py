"""A real gRPC client (Python grpcio) for tests/it/grpc.rs: runs each case against the
target given as argv[1] (host:port, plaintext HTTP/2) and exits non-zero, saying what
failed, if one does. Prints "ok <case>" per passed case."""

import queue
import sys
import time

import grpc


def ident(b):
    return b


def main():
    target = sys.argv[1]
    ch = grpc.insecure_channel(target)
    grpc.channel_ready_future(ch).result(timeout=10)

    def unary(name):
        return ch.unary_unary(f"/test.Echo/{name}", request_serializer=ident, response_deserializer=ident)

    failures = []

    # unary OK
    got = unary("Echo")(b"hello", timeout=10)
    if got != b"hello":
        failures.append(f"unary: got {got!r}")
    else:
        print("ok unary", flush=True)

    # a non-OK status with its details and trailers
    try:
        unary("Fail")(b"x", timeout=10)
        failures.append("status: the call succeeded")
    except grpc.RpcError as e:
        trailers = dict(e.trailing_metadata() or ())
        if e.code() != grpc.StatusCode.FAILED_PRECONDITION or e.details() != "nope":
            failures.append(f"status: got {e.code()} {e.details()!r}")
        elif trailers.get("x-detail") != "why":
            failures.append(f"status: trailers {trailers!r}")
        else:
            print("ok status-with-trailers", flush=True)

    # bidi streaming: each message is sent only after the answer to the previous one came
    # back, so the call only completes if both directions stream through the proxy
    answered = queue.Queue()
    words = [b"a", b"b", b"c"]

    def requests():
        for w in words:
            yield w
            try:
                answered.get(timeout=5)
            except queue.Empty:
                return

    chat = ch.stream_stream("/test.Echo/Chat", request_serializer=ident, response_deserializer=ident)
    replies = []
    try:
        for r in chat(requests(), timeout=15):
            replies.append(r)
            answered.put(r)
    except grpc.RpcError as e:
        failures.append(f"bidi: {e.code()} {e.details()!r}")
    if replies != [b"echo:" + w for w in words]:
        failures.append(f"bidi: replies {replies!r}")
    else:
        print("ok bidi-streaming", flush=True)

    # a cancel reaches the origin
    before = int(unary("Cancels")(b"", timeout=10))
    fut = unary("Slow").future(b"x", timeout=30)
    time.sleep(0.5)
    fut.cancel()
    deadline = time.monotonic() + 5
    n = before
    while time.monotonic() < deadline:
        n = int(unary("Cancels")(b"", timeout=10))
        if n > before:
            break
        time.sleep(0.1)
    if n <= before:
        failures.append("cancel: the origin never saw the call cancelled")
    else:
        print("ok cancel", flush=True)

    ch.close()
    if failures:
        print("FAILED: " + "; ".join(failures), flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
