"""`rag serve` under bad and concurrent requests, on 127.0.0.1 with a stand-in answerer (no model needed):
every request gets a proper HTTP status within a bounded time, the server stays up, and nothing of a
traceback reaches the client."""
from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pear_edge.rag import server as rag_server
from pear_edge.rag.answer import Answer, check_question
from pear_edge.rag.index import Hit
from pear_edge.runtime.timing import Timing


class StandInIndex:
    def count(self):
        return 1, 2


class StandInAnswerer:
    """What the server needs of an Answerer, answering 'Paris' in three pieces."""

    models = [("base: stand-in.gguf", None)]
    index = StandInIndex()

    def retrieve(self, question, k):
        check_question(question)
        return [Hit("a.txt", 0, "Paris is the capital of France.", 0.9)][:k]

    def stream(self, llm, label, question, hits, max_tokens, on_piece, deadline=None):
        for piece in ("Pa", "ri", "s"):
            time.sleep(0.01)
            on_piece(piece)
        return Answer(label, "Paris", Timing(prompt_tokens=20, output_tokens=3, seconds=0.03, first_token_s=0.01))


@pytest.fixture(scope="module")
def server():
    saved = rag_server.RagHandler.timeout
    rag_server.RagHandler.timeout = 1.0  # a stalled body gives up after 1 s, not 10
    srv = rag_server.make_server(StandInAnswerer(), port=0, max_tokens=8)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    rag_server.RagHandler.timeout = saved


def raw(server, head: str, body: bytes = b"", timeout: float = 10.0) -> tuple[int, bytes]:
    """Send raw bytes; return (HTTP status, body). Fails if no status line arrives within `timeout`."""
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=timeout) as s:
        s.sendall((head + "Connection: close\n").replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/"), data[:200]
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def post(server, body: bytes, content_type: str = "application/json", length: int | None = None,
         host: str = "127.0.0.1") -> tuple[int, bytes]:
    headers = f"POST /api/ask HTTP/1.1\nHost: {host}\n"
    if content_type:
        headers += f"Content-Type: {content_type}\n"
    headers += f"Content-Length: {len(body) if length is None else length}\n"
    return raw(server, headers, body)


NESTED = b"[" * 30000 + b"]" * 30000

BAD_REQUESTS = [
    ("k 1e999", dict(body=b'{"question": "q?", "k": 1e999}'), 400),
    ("k NaN", dict(body=b'{"question": "q?", "k": NaN}'), 400),
    ("k 0", dict(body=b'{"question": "q?", "k": 0}'), 400),
    ("k 21", dict(body=b'{"question": "q?", "k": 21}'), 400),
    ("k true", dict(body=b'{"question": "q?", "k": true}'), 400),
    ("k string", dict(body=b'{"question": "q?", "k": "5"}'), 400),
    ("k 2.5", dict(body=b'{"question": "q?", "k": 2.5}'), 400),
    ("30000 nested brackets", dict(body=NESTED[:60000]), 400),
    ("nested inside the question", dict(body=b'{"question": ' + NESTED[:40000] + b'}'), 400),
    ("text/plain body", dict(body=b'{"question": "q?"}', content_type="text/plain"), 415),
    ("form body", dict(body=b"question=q", content_type="application/x-www-form-urlencoded"), 415),
    ("no content type", dict(body=b'{"question": "q?"}', content_type=""), 415),
    ("empty question", dict(body=b'{"question": ""}'), 400),
    ("blank question", dict(body=b'{"question": "  \\n "}'), 400),
    ("question number", dict(body=b'{"question": 5}'), 400),
    ("question missing", dict(body=b'{"k": 3}'), 400),
    ("question too long", dict(body=json.dumps({"question": "x" * 5000}).encode()), 400),
    ("JSON list", dict(body=b'[1, 2]'), 400),
    ("not JSON", dict(body=b"{question"), 400),
    ("not UTF-8", dict(body=b'{"question": "\xff\xfe"}'), 400),
    ("lone surrogate in the question", dict(body=b'{"question": "zebra \\ud800"}'), 400),
    ("empty body", dict(body=b""), 400),
    ("body too large", dict(body=b"", length=10**7), 413),
    ("Content-Length longer than the body", dict(body=b'{"question": "q?"}', length=500), 408),
    ("other Host", dict(body=b'{"question": "q?"}', host="evil.example"), 403),
]


@pytest.mark.parametrize("name, request_, status", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_gets_a_4xx(server, name, request_, status):
    start = time.monotonic()
    code, body = post(server, **request_)
    assert code == status, body
    assert time.monotonic() - start < 5
    assert b"Traceback" not in body and b"Error:" not in body
    if code != 403:
        assert json.loads(body)["error"].startswith("bad request") or code in (408, 415, 413)


def test_headers_without_content_length_and_unknown_paths(server):
    assert raw(server, "POST /api/ask HTTP/1.1\nHost: localhost\nContent-Type: application/json\n")[0] == 411
    assert raw(server, "POST /api/ask HTTP/1.1\nHost: localhost\nContent-Type: application/json\n"
                       "Content-Length: lots\n")[0] == 411
    assert raw(server, "POST /api/other HTTP/1.1\nHost: localhost\nContent-Length: 0\n")[0] == 404
    assert raw(server, "GET /etc/passwd HTTP/1.1\nHost: localhost\n")[0] == 404


def test_32_concurrent_asks_all_answered_and_server_stays_up(server):
    body = json.dumps({"question": "What is the capital of France?", "k": 1}).encode()
    start = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda _: post(server, body), range(32)))
    assert time.monotonic() - start < 30
    codes = [code for code, _ in results]
    assert set(codes) <= {200, 503} and 200 in codes, codes
    for code, payload in results:
        assert b"Traceback" not in payload
        if code == 200:
            events = [json.loads(line) for line in payload.splitlines() if line.strip()]
            assert events[0]["type"] == "sources" and events[-1]["type"] == "end"
            assert "".join(e["text"] for e in events if e["type"] == "token") == "Paris"
        else:
            assert json.loads(payload)["error"].startswith("busy")
    code, info = raw(server, "GET /api/info HTTP/1.1\nHost: localhost\n")
    assert code == 200 and json.loads(info)["chunks"] == 2
    assert post(server, body)[0] == 200  # still answering after the burst


def test_info_before_models_are_loaded():
    srv = rag_server.make_server(None, port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        assert raw(srv, "GET /api/info HTTP/1.1\nHost: localhost\n")[0] == 503
        assert post(srv, b'{"question": "q?"}')[0] == 503
    finally:
        srv.shutdown()
        srv.server_close()


def test_every_response_forbids_framing_and_foreign_scripts(server):
    for head in ("GET / HTTP/1.1\nHost: 127.0.0.1\n", "GET /nothing HTTP/1.1\nHost: 127.0.0.1\n"):
        with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as s:
            s.sendall((head + "Connection: close\n").replace("\n", "\r\n").encode() + b"\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        headers = data.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
        assert "x-frame-options: deny" in headers and "frame-ancestors 'none'" in headers
        assert "x-content-type-options: nosniff" in headers


def test_a_slow_client_is_cut_off_and_idle_connections_are_bounded(server, monkeypatch):
    monkeypatch.setattr(rag_server, "REQUEST_SECONDS", 1.5)
    port = server.server_address[1]
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\n")
        cut = None
        for i in range(16):  # a header line every 0.5 s for 8 s: each read is in time, the request never ends
            time.sleep(0.5)
            try:
                slow.sendall(f"X-Slow-{i}: 1\r\n".encode())
                slow.settimeout(0.01)
                if slow.recv(65536) == b"":
                    cut = time.monotonic() - start
                    break
            except socket.timeout:
                continue
            except OSError:
                cut = time.monotonic() - start
                break
    assert cut is not None and cut < 4, cut  # cut off near REQUEST_SECONDS, not after the 8 s of headers
    idle = []
    try:
        for _ in range(rag_server.MAX_CONNECTIONS + 8):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.3)
        refused = 0
        for s in idle[rag_server.MAX_CONNECTIONS:]:
            s.settimeout(2)
            try:
                refused += s.recv(1) == b""  # closed by the server at once
            except ConnectionResetError:
                refused += 1
            except socket.timeout:  # held open: not refused
                pass
        assert refused == 8
    finally:
        for s in idle:
            s.close()
    time.sleep(0.3)
    assert raw(server, "GET / HTTP/1.1\nHost: 127.0.0.1\n")[0] == 200  # the server is still there
