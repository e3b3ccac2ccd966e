"""An external authorizer, as Istio's sample ext-authz server decides: a
request carrying `x-ext-authz: allow` is allowed (and the user it names,
`x-ext-authz-user`, is handed on as `x-user`); any other is denied, 403,
`denied by ext_authz`.

  ext_authz.py http PORT          Envoy's HTTP authorization protocol
  ext_authz.py grpc PORT XDS     envoy.service.auth.v3.Authorization/Check,
                                 with Envoy's protos from the directory XDS
Prints `listening` when ready, and one line per check.
"""
import sys


def decide(headers):
    allowed = headers.get("x-ext-authz") == "allow"
    return allowed, headers.get("x-ext-authz-user", "anonymous")


def http(port):
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def check(self):
            headers = {k.lower(): v for k, v in self.headers.items()}
            allowed, user = decide(headers)
            print("http check", self.command, self.path, "allowed" if allowed else "denied", flush=True)
            body = b"" if allowed else b"denied by ext_authz"
            self.send_response(200 if allowed else 403)
            self.send_header("x-ext-authz-check-result", "allowed" if allowed else "denied")
            if allowed:
                self.send_header("x-user", user)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = check

    class Server(http.server.ThreadingHTTPServer):
        import socket
        address_family = socket.AF_INET6

        def server_bind(self):
            import socket
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

    server = Server(("::", port), Handler)
    print("listening", flush=True)
    server.serve_forever()


def grpc(port, xds):
    from concurrent import futures

    sys.path.insert(0, xds)

    import grpc as g
    from envoy.config.core.v3 import base_pb2
    from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
    from envoy.type.v3 import http_status_pb2
    from google.rpc import code_pb2, status_pb2

    class Authorization(external_auth_pb2_grpc.AuthorizationServicer):
        def Check(self, request, context):
            http_request = request.attributes.request.http
            allowed, user = decide(dict(http_request.headers))
            print("grpc check", http_request.method, http_request.path,
                  "source", request.attributes.source.principal,
                  "allowed" if allowed else "denied", flush=True)
            if allowed:
                return external_auth_pb2.CheckResponse(
                    status=status_pb2.Status(code=code_pb2.OK),
                    ok_response=external_auth_pb2.OkHttpResponse(headers=[
                        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="x-user", value=user)),
                    ]),
                )
            return external_auth_pb2.CheckResponse(
                status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED),
                denied_response=external_auth_pb2.DeniedHttpResponse(
                    status=http_status_pb2.HttpStatus(code=http_status_pb2.Forbidden),
                    headers=[base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(
                        key="x-ext-authz-check-result", value="denied"))],
                    body="denied by ext_authz",
                ),
            )

    server = g.server(futures.ThreadPoolExecutor(max_workers=4))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Authorization(), server)
    server.add_insecure_port("[::]:%d" % port)
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    if sys.argv[1] == "http":
        http(int(sys.argv[2]))
    else:
        grpc(int(sys.argv[2]), sys.argv[3])
