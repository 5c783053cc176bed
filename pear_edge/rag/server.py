"""`pear-edge rag serve`: the ask / compare flow as a local web page.

Python's own http.server: two routes and a streamed response need no framework, and the demo stays
dependency-free. Bound to 127.0.0.1 and answering only Host: localhost/127.0.0.1 (so a web page elsewhere
cannot reach it through DNS rebinding). Answers stream as newline-delimited JSON events that the page
reads with fetch(); one question is answered at a time (llama.cpp contexts are not thread-safe).

Limits, so that no request can hang a thread or the server: a body of at most MAX_BODY bytes, JSON only
(`Content-Type: application/json`: a cross-site "simple" POST cannot send it), a socket timeout on every
read and write, REQUEST_SECONDS for a whole request to arrive, at most MAX_CONNECTIONS open connections, at most MAX_PENDING asks admitted at once (others get 503 at once, and an admitted one
gives up with 503 after QUEUE_WAIT seconds), and ANSWER_SECONDS of generation per model.
Every bad request gets a 4xx with a one-line JSON error; nothing of a traceback reaches the client.
"""
from __future__ import annotations

import json
import math
import signal
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from pear_edge.base.errors import PearError
from pear_edge.data.templates import load_template
from pear_edge.rag.answer import Answerer

ALLOWED_HOSTS = {"127.0.0.1", "localhost"}
MAX_BODY = 64 * 1024
MAX_K = 20
REQUEST_SECONDS = 20.0  # the whole request (line, headers, body) must arrive within this
MAX_CONNECTIONS = 32  # open connections at once; more are closed at once
SECURITY_HEADERS = (
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
                                "'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    ("X-Content-Type-Options", "nosniff"),
)
MAX_QUESTION = 2000       # characters
SOCKET_TIMEOUT = 10.0     # seconds per read/write on a connection
MAX_PENDING = 4           # asks being answered or waiting for the model
QUEUE_WAIT = 120.0        # seconds an admitted ask waits for the model
ANSWER_SECONDS = 120.0    # generation time per model and question


class BadRequest(Exception):
    """A request the client must fix: (HTTP status, one-line message)."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def parse_ask(content_type: str | None, length_header: str | None, read) -> tuple[str, int]:
    """(question, k) from a POST /api/ask, or BadRequest. `read(n)` reads the body (with a timeout)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise BadRequest(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the question as application/json")
    try:
        length = int(length_header or "")
    except ValueError:
        raise BadRequest(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required") from None
    if length > MAX_BODY:
        raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_BODY} bytes")
    if length < 1:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "empty request body")
    body = read(length)
    if len(body) != length:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "request body shorter than its Content-Length")
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):  # not JSON / not UTF-8 / nested too deeply
        raise BadRequest(HTTPStatus.BAD_REQUEST, "the body is not a valid JSON object") from None
    if not isinstance(request, dict):
        raise BadRequest(HTTPStatus.BAD_REQUEST, "the body must be a JSON object {question, k}")
    question, k = request.get("question"), request.get("k", 5)
    if not isinstance(question, str) or not question.strip():
        raise BadRequest(HTTPStatus.BAD_REQUEST, "'question' must be a non-empty string")
    if not _is_text(question):
        raise BadRequest(HTTPStatus.BAD_REQUEST, "'question' is not valid Unicode text (a lone surrogate)")
    if len(question) > MAX_QUESTION:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"'question' is longer than {MAX_QUESTION} characters")
    if isinstance(k, float) and math.isfinite(k) and k.is_integer():
        k = int(k)  # the page's Number() input
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"'k' must be an integer in 1..{MAX_K}")
    return question, k


def _is_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class RagServer(ThreadingHTTPServer):
    daemon_threads = True

    def verify_request(self, request, client_address) -> bool:
        """At most MAX_CONNECTIONS open at once: a flood of idle connections cannot hold every thread."""
        with self.connections_lock:
            if len(self.connections) >= MAX_CONNECTIONS:
                return False  # socketserver closes it at once
            self.connections.add(request)
        return True

    def shutdown_request(self, request) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def __init__(self, answerer: Answerer | None, port: int, max_tokens: int):
        super().__init__(("127.0.0.1", port), RagHandler)
        self.answerer = answerer
        self.max_tokens = max_tokens
        self.lock = threading.Lock()  # one answer at a time: llama.cpp contexts are not thread-safe
        self.pending = threading.BoundedSemaphore(MAX_PENDING)
        self.connections, self.connections_lock = set(), threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class RagHandler(BaseHTTPRequestHandler):
    server: RagServer

    def setup(self) -> None:
        """The socket timeout bounds each read; this deadline bounds the whole request, so that a client
        sending a header line every few seconds is cut off (`request_arrived` cancels it)."""
        super().setup()
        self.deadline = threading.Timer(REQUEST_SECONDS, self._cut_off)
        self.deadline.daemon = True
        self.deadline.start()

    def _cut_off(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def request_arrived(self) -> None:
        self.deadline.cancel()

    def finish(self) -> None:
        self.deadline.cancel()
        super().finish()
    timeout = SOCKET_TIMEOUT  # applied to the connection by StreamRequestHandler.setup

    def log_message(self, format, *args):  # keep the console for answers, not access logs
        pass

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        if host in ALLOWED_HOSTS:
            return True
        self.send_error(HTTPStatus.FORBIDDEN, "only local requests are served")
        return False

    def end_headers(self) -> None:
        """Every response, errors included: no other origin may frame the page (clickjacking), and the page
        runs only its own inline script and style and talks only to this server."""
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)
        super().end_headers()

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode(), "application/json")

    def do_GET(self):
        self.request_arrived()
        if not self._host_ok():
            return
        if self.path == "/api/info" and self.server.answerer is None:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "the models are still loading")
        elif self.path in ("/", "/index.html"):
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
        self.close_connection = True
        try:
            question, k = parse_ask(self.headers.get("Content-Type"), self.headers.get("Content-Length"),
                                    self.rfile.read)
        except BadRequest as exc:
            self._error(exc.status, f"bad request: {exc}")
            return
        except OSError:  # the body never came (socket timeout) or the client went away
            self._error(HTTPStatus.REQUEST_TIMEOUT, "the request body did not arrive in time")
            return
        self.request_arrived()
        if self.server.answerer is None:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "the models are still loading")
        elif not self.server.pending.acquire(blocking=False):
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, f"busy: {MAX_PENDING} questions are in progress; try again")
        else:
            try:
                if self.server.lock.acquire(timeout=QUEUE_WAIT):
                    try:
                        self._stream_answer(question, k)
                    finally:
                        self.server.lock.release()
                else:
                    self._error(HTTPStatus.SERVICE_UNAVAILABLE, "busy: timed out waiting for the model")
            finally:
                self.server.pending.release()

    def _stream_answer(self, question: str, k: int) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()  # HTTP/1.0 style: the stream ends when the connection closes
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
                                         lambda piece, i=i: self._event(type="token", model=i, text=piece),
                                         deadline=time.monotonic() + ANSWER_SECONDS)
                self._event(type="done", model=i, **answer.as_dict())
            self._event(type="end")
        except PearError as exc:
            self._event(type="error", message=str(exc))
        except OSError:
            pass  # the page went away mid-answer, or stopped reading (socket timeout)
        except Exception as exc:  # noqa: BLE001 - a bug must not reach the page as a traceback
            self._event(type="error", message=f"internal error ({type(exc).__name__}); see the server console")
            print(f"pear-edge: warning: answering failed: {exc!r}", file=sys.stderr)


def make_server(answerer: Answerer | None, port: int = 8765, max_tokens: int = 96) -> RagServer:
    try:
        return RagServer(answerer, port, max_tokens)
    except OSError as exc:
        raise PearError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); pick another --port") from None


def serve_forever(args) -> int:
    server = make_server(None, args.port, args.max_tokens)  # a busy port fails before seconds of model loading
    try:
        server.answerer = Answerer(args.db, args.model, args.compare, n_ctx=args.n_ctx,
                                   prompt_format=args.prompt_format, template=load_template(args.template))
        labels = ", ".join(label for label, _ in server.answerer.models)
        print(f"serving {labels} at {server.url} (Ctrl-C to stop)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP raised as an interrupt by the CLI
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"pear-edge: stopped serving ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    finally:
        server.server_close()
    return 0
