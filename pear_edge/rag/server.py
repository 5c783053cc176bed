"""`pear-edge rag serve`: the ask / compare flow as a local web page.

Python's own http.server: two routes and a streamed response need no framework, and the demo stays
dependency-free. Bound to 127.0.0.1 and answering only Host: localhost/127.0.0.1 (so a web page elsewhere
cannot reach it through DNS rebinding). Answers stream as newline-delimited JSON events that the page
reads with fetch(); one question is answered at a time (llama.cpp contexts are not thread-safe).
"""
from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from ..errors import PearError
from .answer import Answerer

ALLOWED_HOSTS = {"127.0.0.1", "localhost"}
MAX_BODY = 64 * 1024
MAX_K = 20


class RagServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, answerer: Answerer | None, port: int, max_tokens: int):
        super().__init__(("127.0.0.1", port), RagHandler)
        self.answerer = answerer
        self.max_tokens = max_tokens
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class RagHandler(BaseHTTPRequestHandler):
    server: RagServer

    def log_message(self, format, *args):  # keep the console for answers, not access logs
        pass

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        if host in ALLOWED_HOSTS:
            return True
        self.send_error(HTTPStatus.FORBIDDEN, "only local requests are served")
        return False

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if not self._host_ok():
            return
        if self.path in ("/", "/index.html"):
            page = resources.files("pear_edge.rag").joinpath("static/index.html").read_bytes()
            self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
        elif self.path == "/api/info":
            files, chunks = self.server.answerer.index.count()
            info = {"models": [label for label, _ in self.server.answerer.models], "files": files, "chunks": chunks}
            self._send(HTTPStatus.OK, json.dumps(info).encode(), "application/json")
        else:
            self.send_error(HTTPStatus.NOT_FOUND)

    def do_POST(self):
        if not self._host_ok():
            return
        if self.path != "/api/ask":
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                raise ValueError(f"request body must be 1..{MAX_BODY} bytes")
            request = json.loads(self.rfile.read(length))
            question, k = str(request["question"]), int(request.get("k", 5))
            if not 1 <= k <= MAX_K:
                raise ValueError(f"k must be in 1..{MAX_K}")
        except (ValueError, KeyError, TypeError) as exc:
            self._send(HTTPStatus.BAD_REQUEST, json.dumps({"error": f"bad request: {exc}"}).encode(),
                       "application/json")
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.close_connection = True  # HTTP/1.0 style: the stream ends when the connection closes
        with self.server.lock:
            self._answer(question, k)

    def _event(self, **event) -> None:
        self.wfile.write(json.dumps(event).encode() + b"\n")
        self.wfile.flush()

    def _answer(self, question: str, k: int) -> None:
        answerer = self.server.answerer
        try:
            hits = answerer.retrieve(question, k)
            self._event(type="sources", hits=[{"cite": h.cite, "score": round(h.score, 4), "text": h.text}
                                              for h in hits])
            for i, (label, llm) in enumerate(answerer.models):
                self._event(type="start", model=i, label=label)
                answer = answerer.stream(llm, label, question, hits, self.server.max_tokens,
                                         lambda piece, i=i: self._event(type="token", model=i, text=piece))
                self._event(type="done", model=i, **answer.as_dict())
            self._event(type="end")
        except PearError as exc:
            self._event(type="error", message=str(exc))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away mid-answer


def make_server(answerer: Answerer | None, port: int = 8765, max_tokens: int = 96) -> RagServer:
    try:
        return RagServer(answerer, port, max_tokens)
    except OSError as exc:
        raise PearError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); pick another --port") from None


def serve_forever(args) -> int:
    server = make_server(None, args.port, args.max_tokens)  # a busy port fails before seconds of model loading
    try:
        server.answerer = Answerer(args.db, args.model, args.compare, n_ctx=args.n_ctx)
        labels = ", ".join(label for label, _ in server.answerer.models)
        print(f"serving {labels} at {server.url} (Ctrl-C to stop)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
