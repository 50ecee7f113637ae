"""A real HTTP server on 127.0.0.1 for the download tests (test_weights.py, test_download.py)."""

import http.server
import threading


class LoopbackServer:
    """Serves `files` (name -> bytes) on 127.0.0.1, records each request path, and can lie about
    Content-Length (`declared`; None sends no Content-Length, the body ending when the connection
    closes) to simulate a connection that drops mid-file. `content_types` (name -> Content-Type header);
    `delays` (name -> seconds before answering: a slow server; `release()` ends every wait at once)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.declared: dict[str, int | None] = {}
        self.content_types: dict[str, str] = {}
        self.delays: dict[str, float] = {}
        self._released = threading.Event()
        self.requests: list[str] = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def _handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                server.requests.append(self.path)
                name = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
                if name in server.delays:
                    server._released.wait(server.delays[name])
                body = server.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                if name in server.content_types:
                    self.send_header("Content-Type", server.content_types[name])
                declared = server.declared.get(name, len(body))
                if declared is not None:
                    self.send_header("Content-Length", str(declared))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:  # the client gave up (a size limit): nothing to report here
                    pass

            def log_message(self, *args):
                pass

        return Handler

    def release(self):
        """End every delay now (a test's slow answers do not hold up the next test)."""
        self._released.set()

    def close(self):
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
