"""A real HTTP server on 127.0.0.1 for download tests: Range requests and chosen misbehaviour.

with FileServer() as server:
    server.add("/toy/a.bin", data, drop_after=1000, fail=[500])
    server.url  # http://127.0.0.1:PORT
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Served:
    """One path's bytes and how the server misbehaves for it."""

    data: bytes
    etag: str | None = None  # sent as X-Linked-ETag, as Hugging Face does for Git LFS files
    fail: list[int] = field(default_factory=list)  # statuses answered first, one per request
    drop_after: int | None = None  # close the connection after this many body bytes ...
    drops: int = 1  # ... this many times
    stall_after: int | None = None  # send this many bytes, then go silent (once)
    stall_s: float = 0.0
    ignore_range: bool = False  # answer 200 with the whole file even to a Range request
    delay_s: float = 0.0  # wait before answering (to observe parallel requests)
    redirect_to: str | None = None  # answer 302 to this path (with the ETag, like HF)
    validator: str | None = None  # sent as ETag (a quoted string) or Last-Modified (a date),
    # and compared with a request's If-Range: another value gets the whole file (200)


@dataclass
class Hit:
    path: str
    range: str | None
    if_range: str | None = None


class FileServer:
    def __init__(self) -> None:
        self.files: dict[str, Served] = {}
        self.hits: list[Hit] = []
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        self.httpd = _QuietServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def add(self, path: str, data: bytes, **behaviour: Any) -> Served:
        self.files[path] = Served(data, **behaviour)
        return self.files[path]

    def hits_for(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up (on purpose, in these tests) are not news


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            with server.lock:
                server.hits.append(
                    Hit(self.path, self.headers.get("Range"), self.headers.get("If-Range"))
                )
                server.active += 1
                server.max_active = max(server.max_active, server.active)
            try:
                self._answer()
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                with server.lock:
                    server.active -= 1

        def _answer(self) -> None:
            f = server.files.get(self.path)
            if f is None:
                return self._status(404)
            time.sleep(f.delay_s)
            if f.fail:
                return self._status(f.fail.pop(0))
            if f.redirect_to:
                self.send_response(302)
                self.send_header("Location", f.redirect_to)
                if f.etag:
                    self.send_header("X-Linked-ETag", f.etag)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            start = 0
            m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if_range = self.headers.get("If-Range")
            if m and if_range is not None and if_range != f.validator:
                m = None  # RFC 9110 13.1.5: the file changed since, here is all of it
            if m and not f.ignore_range:
                start = int(m[1])
                if start >= len(f.data):
                    return self._status(416)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(f.data) - 1}/{len(f.data)}")
            else:
                self.send_response(200)
            body = f.data[start:]
            self.send_header("Content-Length", str(len(body)))
            if f.etag and not f.redirect_to:
                self.send_header("X-Linked-ETag", f.etag)
            if f.validator:
                quoted = f.validator.startswith('"')
                self.send_header("ETag" if quoted else "Last-Modified", f.validator)
            self.end_headers()
            if f.drop_after is not None and f.drops > 0:
                f.drops -= 1
                self.wfile.write(body[: f.drop_after])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return None
            if f.stall_after is not None:
                self.wfile.write(body[: f.stall_after])
                self.wfile.flush()
                f.stall_after = None
                time.sleep(f.stall_s)
                self.close_connection = True
                return None
            self.wfile.write(body)
            return None

        def _status(self, code: int) -> None:
            body = f"status {code}\n".encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
