"""End to end in headless Chromium: open the `rag serve` page, ask, watch both answers stream in.

Chromium is driven over the DevTools protocol (websocket-client); skipped only when the `chromium`
binary is absent (scripts/setup.sh installs the Debian package)."""
import http.client
import json
import shutil
import subprocess
import threading
import urllib.request

import pytest
from corpus import write_topics

from pear_edge.runtime.models import default_gguf_path
from pear_edge.rag.answer import Answerer
from pear_edge.rag.embed import Embedder
from pear_edge.rag.index import update_index
from pear_edge.rag.server import make_server

pytestmark = pytest.mark.slow  # the real default GGUF and a browser
CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]
WAIT_FOR_ANSWER = """new Promise((resolve) => {
  const status = document.getElementById("status");
  const report = () => resolve(JSON.stringify({
    state: status.dataset.state, message: status.textContent,
    labels: [...document.querySelectorAll(".answer h2")].map((e) => e.textContent),
    texts: [...document.querySelectorAll(".answer .text")].map((e) => e.textContent),
    timings: [...document.querySelectorAll(".answer .timing")].map((e) => e.textContent),
    sources: [...document.querySelectorAll("#sources summary")].map((e) => e.textContent),
    info: document.getElementById("info").textContent}));
  const check = () => { if (status.dataset.state === "done" || status.dataset.state === "error") report(); };
  new MutationObserver(check).observe(status, {attributes: true, childList: true, characterData: true});
  check();
})"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    docs = write_topics(root / "docs")
    update_index(docs, root / "index.sqlite", Embedder(), progress=False)
    gguf = default_gguf_path()
    srv = make_server(Answerer(root / "index.sqlite", gguf, compare=gguf, n_ctx=2048), port=0, max_tokens=8)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


class DevTools:
    """Minimal DevTools-protocol client: send a command, wait for its reply (events are kept aside)."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=180, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]
            self.events.append(message)

    def wait_event(self, method: str) -> dict:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(json.loads(self.ws.recv()))
        return next(e for e in self.events if e.get("method") == method)


@pytest.fixture
def page(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/setup.sh installs it: apt-get install chromium)")
    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # Chromium announces its DevTools endpoint on stderr
            if line.startswith("DevTools listening on "):
                port = line.split(":")[2].split("/")[0]
                break
        else:
            pytest.fail(f"chromium exited with {proc.wait()} before opening DevTools")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as response:
            target = next(t for t in json.load(response) if t["type"] == "page")
        tools = DevTools(target["webSocketDebuggerUrl"])
        yield tools
        tools.ws.close()
    finally:
        proc.terminate()
        proc.wait()


def test_ask_in_browser_shows_both_answers(server, page, tmp_path):
    page.call("Page.enable")
    page.call("Page.navigate", url=server.url)
    page.wait_event("Page.loadEventFired")
    page.call("Runtime.evaluate", expression="document.getElementById('question').focus()")
    page.call("Input.insertText", text="Which statement handles exceptions?")
    page.call("Runtime.evaluate", expression="document.getElementById('submit').click()")
    result = page.call("Runtime.evaluate", expression=WAIT_FOR_ANSWER, awaitPromise=True)
    state = json.loads(result["result"]["value"])
    assert state["state"] == "done", state["message"]
    assert state["labels"] == ["base: SmolLM2-135M-Instruct.Q4_1.gguf"] * 2
    assert all(text.strip() for text in state["texts"])
    assert state["texts"][0] == state["texts"][1]  # same GGUF twice, greedy decoding
    assert all("tokens in" in t for t in state["timings"])
    assert state["sources"][0].startswith("try.txt#")
    assert state["info"].startswith("3 files")
    shot = page.call("Page.captureScreenshot", format="png")["data"]
    assert len(shot) > 1000


def test_only_local_requests_are_answered(server):
    port = server.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.request("GET", "/", headers={"Host": "evil.example:80"})
    assert conn.getresponse().status == 403
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.request("POST", "/api/ask", body=b"not json", headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 400 and "bad request" in json.loads(response.read())["error"]
