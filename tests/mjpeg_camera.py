"""A real network camera on 127.0.0.1 for the live-input tests (test_video_live.py) and bench/live_lag.py.

It streams Motion JPEG over HTTP (`multipart/x-mixed-replace`, what IP cameras serve at `/video.mjpg`) on a
clock of its own, started by the first connection: frame i is captured at `t0 + i / fps` and sent then (later
if the connection is backed up: never skipped, so a reader that falls behind sees the lag). Each frame carries
its number as a 2 x 8 grid of black and white cells (`frame_number` reads it back), so a test knows which
capture a record came from and when it was taken, without trusting the reader's own bookkeeping. A connection
gets the frames from the moment it connects, as from a camera. `drop_at`: frame numbers at which the current
connection is cut (the reader must reconnect); `frames`: the camera's last frame (then every connection is
refused with a 404); `stop()`: the server goes away (connections refused)."""

from __future__ import annotations

import http.server
import math
import threading
import time

import cv2
import numpy as np

SIZE = (128, 64)  # width, height
_BITS = 16


def draw_frame(number: int, size=SIZE) -> np.ndarray:
    """A BGR frame whose cells spell `number` (16 bits: rows of 8 cells, 1 white, 0 black), on grey."""
    w, h = size
    frame = np.full((h, w, 3), 128, np.uint8)
    cw, ch = w // 8, h // 2
    for bit in range(_BITS):
        row, col = divmod(bit, 8)
        frame[row * ch:(row + 1) * ch, col * cw:(col + 1) * cw] = 255 if (number >> bit) & 1 else 0
    return frame


def frame_number(rgb: np.ndarray) -> int:
    """The number `draw_frame` wrote, read from the centre of each cell (JPEG keeps those far from 128)."""
    h, w = rgb.shape[:2]
    cw, ch = w // 8, h // 2
    number = 0
    for bit in range(_BITS):
        row, col = divmod(bit, 8)
        cell = rgb[row * ch + ch // 4:(row + 1) * ch - ch // 4, col * cw + cw // 4:(col + 1) * cw - cw // 4]
        if cell.mean() > 128:
            number |= 1 << bit
    return number


class MjpegCamera:
    def __init__(self, fps: float = 60.0, *, frames: int | None = None, drop_at=(), size=SIZE):
        self.fps, self.frames, self.size = fps, frames, size
        self.drop_at = set(drop_at)
        self.connections = 0
        self.sent = 0
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/video.mjpg"
        self._stopped = threading.Event()
        self.t0: float | None = None
        self._clock = threading.Lock()
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def captured_at(self, number: int) -> float:
        """The time.monotonic() at which frame `number` was taken."""
        return self.t0 + number / self.fps

    def _jpeg(self, number: int) -> bytes:
        """Encoded as it is sent (nothing kept: the camera's own memory stays flat over a long run)."""
        return cv2.imencode(".jpg", draw_frame(number % (1 << _BITS), self.size),
                            [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()

    def _handler(self):
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                with camera._clock:
                    camera.t0 = time.monotonic() if camera.t0 is None else camera.t0
                number = max(0, math.ceil((time.monotonic() - camera.t0) * camera.fps))
                if camera._stopped.is_set() or (camera.frames is not None and number >= camera.frames):
                    self.send_error(404)
                    return
                camera.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                while not camera._stopped.is_set() and (camera.frames is None or number < camera.frames):
                    if number in camera.drop_at:
                        camera.drop_at.discard(number)
                        return  # the connection is cut
                    delay = camera.captured_at(number) - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    data = camera._jpeg(number)
                    try:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(data) + data + b"\r\n")
                        self.wfile.flush()
                    except OSError:  # the reader went away
                        return
                    camera.sent += 1
                    number += 1

            def log_message(self, *args):
                pass

        return Handler

    def stop(self) -> None:
        """The camera goes away: streams end, new connections are refused."""
        self._stopped.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    close = stop
