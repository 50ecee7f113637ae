"""A real HTTP server on 127.0.0.1 for the download tests (test_weights.py, test_download.py)."""

import http.server
import threading


class LoopbackServer:
    """Serves `files` (name -> bytes) on 127.0.0.1, records each request path, and can lie about
    Content-Length (`declared`) to simulate a connection that drops mid-file."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.declared: dict[str, int] = {}
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
                body = server.files.get(self.path.rsplit("/", 1)[-1])
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(server.declared.get(self.path.rsplit("/", 1)[-1], len(body))))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
