"""scratchgpt/serve.py over HTTP: the page, streamed replies, one conversation per session,
the queue, bad input, and the `scratchgpt serve` command. A tiny character-level run is
trained here; the server runs in a thread of the test process."""
import http.client
import json
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from scratchgpt import serve
from scratchgpt.chat import Chat, load_chat_model
from scratchgpt.serve import ChatApp, make_server

TEXT = "the cat sat on the mat.\nthe dog sat on the log.\na cat and a dog.\n" * 30


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny character-level run made by scratchgpt.train (a few seconds)."""
    from scratchgpt.train import TrainConfig, train
    root = tmp_path_factory.mktemp("serve")
    (root / "t.txt").write_text(TEXT)
    out = root / "run"
    train(TrainConfig(text_file=str(root / "t.txt"), n_layers=2, n_heads=2, emb_dim=16, context_length=64,
                      batch_size=8, max_iters=30, eval_interval=30, eval_iters=1, sample_tokens=4, lr=1e-2,
                      out_dir=str(out)), progress=False, log=lambda *a: None)
    return str(out)


@pytest.fixture
def server(run_dir):
    model, tok, alpaca = load_chat_model(run_dir)
    app = ChatApp(model, tok, alpaca, max_new_tokens=12, temperature=0.7, top_k=10, seed=0, name="tiny")
    srv = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def request(srv, method, path, body=None, raw=None):
    """(status, parsed JSON body)."""
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=30)
    data = raw if raw is not None else (None if body is None else json.dumps(body))
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    return r.status, json.loads(payload) if r.getheader("Content-Type", "").startswith("application/json") else payload


def chat(srv, body, on_event=None):
    """POST /api/chat and read the event stream as it arrives: [(event, data, arrival time)]."""
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=60)
    conn.request("POST", "/api/chat", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200, r.read()
    assert r.getheader("Content-Type").startswith("text/event-stream")
    events, event = [], None
    while True:
        line = r.fp.readline()
        if not line:
            break
        line = line.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            events.append((event, json.loads(line[6:]), time.perf_counter()))
            if on_event:
                on_event(events[-1])
    conn.close()
    return events


def wait_until(condition, seconds=30):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_page_is_served_and_needs_nothing_from_the_internet(server):
    status, page = request(server, "GET", "/")
    page = page.decode()
    assert status == 200 and 'placeholder="Send a message"' in page
    for external in ('src="http', "src='http", 'href="http', "@import", "//cdn", "https://"):
        assert external not in page
    status, info = request(server, "GET", "/api/info")
    assert status == 200 and info["format"] == "plain" and info["context_length"] == 64
    assert (info["temperature"], info["top_k"], info["max_new_tokens"]) == (0.7, 10, 12)


def test_a_reply_streams_token_by_token_and_is_what_chat_would_say(server, run_dir):
    events = chat(server, {"session": "tab1", "message": "the cat", "temperature": 0})
    tokens = [d["text"] for e, d, _ in events if e == "token"]
    done = [d for e, d, _ in events if e == "done"]
    assert len(tokens) > 1 and len(done) == 1 and events[-1][0] == "done"
    assert "".join(tokens).rstrip("\n") == done[0]["reply"] and done[0]["temperature"] == 0.0
    # greedy: exactly the reply `scratchgpt chat` gives to the same message
    model, tok, alpaca = load_chat_model(run_dir)
    import io
    expected = Chat(model, tok, alpaca, max_new_tokens=12, temperature=0.0, top_k=10,
                    out=io.StringIO()).reply("the cat")
    assert done[0]["reply"] == expected and done[0]["tokens"] == len(tok.encode(expected))


def test_one_conversation_per_session_and_reset(server):
    chat(server, {"session": "tab-a", "message": "the dog"})
    chat(server, {"session": "tab-a", "message": "a cat"})
    chat(server, {"session": "tab-b", "message": "the mat"})
    _, a = request(server, "GET", "/api/history?session=tab-a")
    _, b = request(server, "GET", "/api/history?session=tab-b")
    assert [t["user"] for t in a["turns"]] == ["the dog", "a cat"]
    assert [t["user"] for t in b["turns"]] == ["the mat"]
    status, r = request(server, "POST", "/api/reset", {"session": "tab-a"})
    assert status == 200 and r["turns"] == []
    assert request(server, "GET", "/api/history?session=tab-a")[1]["turns"] == []
    assert len(request(server, "GET", "/api/history?session=tab-b")[1]["turns"]) == 1


def test_requests_queue_and_two_replies_never_mix(server, monkeypatch):
    app = server.app
    written = []                                   # (server thread, text) in the order the server sent tokens
    real_write = serve._EventWriter.write
    monkeypatch.setattr(serve._EventWriter, "write",
                        lambda self, text: (written.append((threading.get_ident(), text)), real_write(self, text))[1])
    blocker = app.queue.take()                     # hold the model: both requests must wait their turn
    results = {}

    def go(name):
        results[name] = chat(server, {"session": name, "message": "the cat" if name == "one" else "a dog",
                                      "temperature": 1.0})
    first = threading.Thread(target=go, args=("one",))
    first.start()
    wait_until(lambda: app.queue.next_ticket == 2)
    second = threading.Thread(target=go, args=("two",))
    second.start()
    wait_until(lambda: app.queue.next_ticket == 3)
    time.sleep(0.2)
    app.queue.wait(blocker)
    app.queue.done()
    first.join(60)
    second.join(60)
    assert set(results) == {"one", "two"}
    one, two = results["one"], results["two"]
    assert [d["position"] for e, d, _ in one if e == "queued"] == [1]
    # two replies were ahead of the second request; it hears of 1 unless the first reply is done before it wakes
    assert [d["position"] for e, d, _ in two if e == "queued"] in ([2, 1], [2])
    for events in (one, two):
        tokens = "".join(d["text"] for e, d, _ in events if e == "token")
        assert tokens.rstrip("\n") == events[-1][1]["reply"]
    # one at a time: the server sent every token of one reply before any of the other (judged by the
    # order of the server's writes, not by when the client threads read them, which a loaded machine
    # can delay), and the first request's reply came first
    threads = [t for t, _ in written]
    runs = [t for i, t in enumerate(threads) if i == 0 or t != threads[i - 1]]
    assert len(runs) == 2, f"the replies interleaved: {len(runs)} runs of tokens"
    assert "".join(text for t, text in written if t == runs[0]).rstrip("\n") == one[-1][1]["reply"]
    assert app.sessions["one"].history[0][1] == one[-1][1]["reply"]


def test_a_message_longer_than_the_context_is_cropped_as_chat_crops_it(server):
    events = chat(server, {"session": "long", "message": "the cat sat on the mat. " * 10})
    notes = [d["text"] for e, d, _ in events if e == "note"]
    assert notes == ["this message is 241 tokens; only its last 63 fit the context window"]
    assert events[-1][0] == "done"


@pytest.mark.parametrize("body, message", [
    ({"session": "s", "message": "the", "temperature": "hot"},
     "temperature must be a number from 0.0 to 5.0, got 'hot'"),
    ({"session": "s", "message": "the", "temperature": -0.5}, "temperature must be a number from 0.0 to 5.0, got -0.5"),
    ({"session": "s", "message": "the", "temperature": 9}, "temperature must be a number"),
    ({"session": "s", "message": "the", "top_k": -1}, "top_k must be an integer from 0 to"),
    ({"session": "s", "message": "the", "top_k": 2.5}, "top_k must be an integer"),
    ({"session": "s", "message": "the", "top_k": True}, "top_k must be an integer"),
    ({"session": "s", "message": "the", "max_new_tokens": 0}, "max_new_tokens must be an integer from 1 to 63"),
    ({"session": "s", "message": "   "}, "message must be a non-empty string"),
    ({"session": "s"}, "message must be a non-empty string"),
    ({"session": "s", "message": "zebra%"}, "cannot be encoded by this model's tokenizer"),
    ({"message": "the"}, "session must be"),
    ({"session": "../etc", "message": "the"}, "session must be"),
])
def test_bad_input_gets_400_with_a_message(server, body, message):
    status, r = request(server, "POST", "/api/chat", body)
    assert status == 400 and message in r["error"]
    assert server.app.queue.next_ticket == 0               # nothing was queued


def test_bad_bodies_and_unknown_paths(server):
    status, r = request(server, "POST", "/api/chat", raw="{not json")
    assert status == 400 and "not JSON" in r["error"]
    status, r = request(server, "POST", "/api/chat", raw="[1, 2]")
    assert status == 400 and "must be a JSON object, got list" in r["error"]
    status, r = request(server, "POST", "/api/chat", raw='{"session": "s", "message": "the", "temperature": NaN}')
    assert status == 400 and "temperature" in r["error"]
    status, r = request(server, "POST", "/api/reset", {"session": ""})
    assert status == 400 and "session must be" in r["error"]
    status, r = request(server, "GET", "/api/history")
    assert status == 400
    assert request(server, "GET", "/nowhere")[0] == 404 and request(server, "POST", "/api/other", {})[0] == 404


def test_a_page_that_goes_away_stops_its_reply_and_frees_the_queue(server):
    """The page's Stop button closes the connection: generation stops (the turn is not kept)
    and the next request is served."""
    app = server.app
    blocker = app.queue.take()
    sock = socket.create_connection(server.server_address[:2], timeout=30)
    body = json.dumps({"session": "gone", "message": "the cat", "max_new_tokens": 63}).encode()
    sock.sendall(b"POST /api/chat HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    received = b""
    while b"event: queued" not in received:
        received += sock.recv(4096)
    sock.close()                                           # gone while waiting its turn
    app.queue.wait(blocker)
    app.queue.done()
    events = chat(server, {"session": "next", "message": "a dog"})
    assert events[-1][0] == "done"
    assert app.history("gone") == [] and len(app.history("next")) == 1


def test_serve_command_prints_its_address_and_answers(run_dir):
    proc = subprocess.Popen([sys.executable, "-m", "scratchgpt", "serve", "--out-dir", run_dir, "--port", "0",
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving a" in line and "plain text continuation" in line, proc.stderr.read() if not line else line
        host, port = line.split("http://")[1].split("/")[0].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", "/api/info")
        info = json.loads(conn.getresponse().read())
        assert info["name"] == "run" and info["parameters"] > 0
    finally:
        proc.terminate()
        proc.wait(30)
