"""A real gRPC server and client (grpcio) for the waypoint tests, with
raw-bytes messages so no generated code is needed.

  grpc_app.py serve PORT NAME
      Echo/Unary answers b"NAME:" + the request; Echo/Chat answers each
      message of a bidirectional stream the same way; Echo/Missing fails
      with NOT_FOUND; Echo/Flaky fails every other call (the first, the
      third...) with UNAVAILABLE and answers the others.
  grpc_app.py unary TARGET MESSAGE
  grpc_app.py flaky TARGET CALLS
      Prints one JSON line: how many calls ended with each status.
  grpc_app.py missing TARGET
  grpc_app.py chat TARGET SECONDS INTERVAL
      Prints one JSON line: what came back, the status.
"""
import json
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "strait.test.Echo"


def serve(port, name):
    prefix = name.encode() + b":"

    def unary(request, context):
        return prefix + request

    def chat(requests, context):
        for message in requests:
            yield prefix + message

    def missing(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "nothing here")

    calls = {"flaky": 0}
    lock = threading.Lock()

    def flaky(request, context):
        with lock:
            calls["flaky"] += 1
            n = calls["flaky"]
        if n % 2 == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"call {n} fails")
        return prefix + request

    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
        "Missing": grpc.unary_unary_rpc_method_handler(missing),
        "Flaky": grpc.unary_unary_rpc_method_handler(flaky),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"[::]:{port}")
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


def report(**fields):
    print(json.dumps(fields), flush=True)


def call(target, method, message):
    with grpc.insecure_channel(target) as channel:
        stub = channel.unary_unary(f"/{SERVICE}/{method}")
        try:
            answer = stub(message.encode(), timeout=20)
            report(answer=answer.decode(), code="OK")
        except grpc.RpcError as err:
            report(answer=None, code=err.code().name, details=err.details())


def flaky(target, count):
    codes = {}
    with grpc.insecure_channel(target) as channel:
        stub = channel.unary_unary(f"/{SERVICE}/Flaky")
        for n in range(count):
            try:
                stub(f"f{n}".encode(), timeout=20)
                code = "OK"
            except grpc.RpcError as err:
                code = err.code().name
            codes[code] = codes.get(code, 0) + 1
    report(codes=codes)


def chat(target, seconds, interval):
    sent = []
    started = time.monotonic()

    def messages():
        n = 0
        while time.monotonic() - started < seconds:
            n += 1
            sent.append(n)
            yield f"m{n}".encode()
            time.sleep(interval)

    answers = []
    with grpc.insecure_channel(target) as channel:
        stub = channel.stream_stream(f"/{SERVICE}/Chat")
        try:
            for answer in stub(messages(), timeout=seconds + 60):
                answers.append(answer.decode())
                if len(answers) % 10 == 0:
                    print(f"answered {len(answers)}", flush=True)
            code = "OK"
        except grpc.RpcError as err:
            code = err.code().name
    report(sent=len(sent), answers=len(answers), first=answers[:1], last=answers[-1:],
           code=code, seconds=round(time.monotonic() - started, 1))


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    elif command == "unary":
        call(sys.argv[2], "Unary", sys.argv[3])
    elif command == "missing":
        call(sys.argv[2], "Missing", "x")
    elif command == "flaky":
        flaky(sys.argv[2], int(sys.argv[3]))
    elif command == "chat":
        chat(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit(f"unknown command {command}")
