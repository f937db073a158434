"""A real HTTPS server on loopback whose answers a test writes as a function of the request.

The agent's client is the standard library's http.client, so its tests talk to a real socket
and real TLS. The function takes and returns httpx's Request and Response (plain values here;
httpx is a dependency of the tests and the verifier, not of the agent). A function that raises
makes the server hang up without answering.
"""

from __future__ import annotations

import contextlib
import http.server
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

Handler = Callable[[httpx.Request], httpx.Response]
_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection"}


@contextlib.contextmanager
def serve(cert: Path, key: Path, handler: Handler, idle_timeout: float | None = None) -> Iterator[str]:
    """Serve `handler` over TLS with `cert`/`key`; yields the base URL (https://127.0.0.1:PORT).
    `idle_timeout`: seconds after which the server closes a kept-alive connection, as uvicorn does."""

    class Adapter(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the verifier does
        timeout = idle_timeout

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            host, port = self.server.server_address[:2]
            request = httpx.Request(
                "POST", f"https://{host}:{port}{self.path}", headers=dict(self.headers.items()), content=body
            )
            try:
                response = handler(request)
            except Exception:
                self.close_connection = True
                return
            content = response.read()
            self.send_response(response.status_code)
            for name, value in response.headers.multi_items():
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("content-length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, *args: object) -> None:
            pass

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Adapter)
    server.daemon_threads = True
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
