"""The chat page of scratchgpt/serve.py in a real browser: headless Chromium (Debian's package,
which .ci/run installs), driven over the Chrome DevTools Protocol.

No driver package is needed: Chromium started with --remote-debugging-pipe reads protocol
commands (JSON, each ended by a NUL byte) from its file descriptor 3 and answers on 4.

Under CI=true a missing Chromium fails the test; elsewhere the test is skipped.

The README's screenshot is taken by this file too:  python tests/test_serve_browser.py docs/serve.png
"""
import base64
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from test_serve import run_dir, server, wait_until  # noqa: F401  (fixtures)

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--remote-debugging-pipe"]


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """A headless Chromium and a minimal DevTools Protocol client over its pipe."""

    def __init__(self, executable, width=900, height=640):
        self.profile = tempfile.mkdtemp(prefix="scratchgpt-chromium-")
        to_browser, self._commands = os.pipe()             # we write commands, Chromium reads fd 3
        self._answers, from_browser = os.pipe()            # Chromium writes fd 4, we read answers
        cmd = [executable, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"]
        # bash puts the two pipe ends on the descriptors 3 and 4 that Chromium expects
        self.proc = subprocess.Popen(["bash", "-c", f'exec "$@" 3<&{to_browser} 4>&{from_browser}', "chromium", *cmd],
                                     pass_fds=(to_browser, from_browser), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self.size = (width, height)
        self.next_id, self.replies, self.events = 0, {}, queue.Queue()
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while True:
            chunk = os.read(self._answers, 1 << 16)
            if not chunk:
                with self.cond:
                    self.replies[None] = "closed"
                    self.cond.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self.cond:
                    if "id" in msg:
                        self.replies[msg["id"]] = msg
                        self.cond.notify_all()
                    else:
                        self.events.put(msg)

    def send(self, method, params=None, session=None, timeout=30):
        with self.cond:
            self.next_id += 1
            mid = self.next_id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._commands, json.dumps(msg).encode() + b"\0")
        with self.cond:
            if not self.cond.wait_for(lambda: mid in self.replies or None in self.replies, timeout):
                raise TimeoutError(f"Chromium did not answer {method} within {timeout} s")
            if mid not in self.replies:
                raise RuntimeError(f"Chromium closed its pipe during {method}")
            reply = self.replies.pop(mid)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def new_tab(self, url):
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        tab = Tab(self, session)
        w, h = self.size
        tab.send("Emulation.setDeviceMetricsOverride",
                 {"width": w, "height": h, "deviceScaleFactor": 1, "mobile": False})
        tab.goto(url)
        return tab

    def close(self):
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._commands, self._answers):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


class Tab:
    """One page: evaluate JavaScript, type, press keys, click, take a screenshot."""

    def __init__(self, browser, session):
        self.browser, self.session = browser, session

    def send(self, method, params=None, timeout=30):
        return self.browser.send(method, params, self.session, timeout)

    def js(self, expression):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def goto(self, url):
        self.send("Page.navigate", {"url": url})
        wait_until(lambda: self.js("document.readyState") == "complete"
                   and self.js("document.getElementById('info')?.textContent.includes('parameters')"))

    def type(self, text):
        """Type into the focused element, as a keyboard would (text input, not a script setting .value)."""
        self.send("Input.insertText", {"text": text})

    def press(self, key, code, keycode):
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": code,
                                                 "windowsVirtualKeyCode": keycode, "nativeVirtualKeyCode": keycode})

    def click(self, selector):
        x, y = self.js(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                       f" return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def screenshot(self, path):
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))


# Records every text the newest reply bubble shows while it streams.
WATCH = """
window.seen = [];
new MutationObserver(() => {
  const bots = document.querySelectorAll('.msg.bot');
  const bot = bots[bots.length - 1];
  if (bot && !bot.dataset.done) window.seen.push(bot.textContent);
}).observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true});
"""


def send_message(tab, text):
    tab.click("#message")
    tab.type(text)
    tab.press("Enter", "Enter", 13)
    wait_until(lambda: tab.js("document.querySelector('.msg.bot:last-of-type')?.dataset.done === '1'"))
    return tab.js("""(() => { const b = [...document.querySelectorAll('.msg.bot')].pop();
                              return {reply: b.firstChild.textContent, meta: b.querySelector('.meta').textContent,
                                      chunks: Number(b.dataset.chunks)}; })()""")


@pytest.fixture
def chromium():
    exe = find_chromium()
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Chromium is missing: .ci/run installs it with apt-get (chromium)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    browser = Chromium(exe)
    yield browser
    browser.close()


def test_chat_page_in_headless_chromium(server, chromium, run_dir, monkeypatch):  # noqa: F811
    from scratchgpt import serve
    from scratchgpt.chat import Chat, load_chat_model
    server.app.defaults["max_new_tokens"] = 40
    # The tiny model makes 40 tokens in a few milliseconds, which can reach the page in a single
    # read; 20 ms per token (a bigger model's pace) lets the page show the reply as it grows.
    send_token = serve._EventWriter.write
    monkeypatch.setattr(serve._EventWriter, "write", lambda self, text: (send_token(self, text), time.sleep(0.02)))
    url = "http://%s:%d/" % server.server_address[:2]
    tab = chromium.new_tab(url)
    assert tab.js("document.querySelector('#message').placeholder") == "Send a message"
    assert tab.js("document.getElementById('temperature-value').textContent") == "0.70"

    # a message typed and sent with Enter: the reply appears piece by piece, then whole
    tab.js(WATCH)
    first = send_message(tab, "the cat")
    seen = [s for s in tab.js("window.seen") if s]
    assert first["chunks"] > 1 and len(set(seen)) > 1, seen
    assert first["reply"].startswith(seen[0]) and "temperature 0.7 · top-k 10" in first["meta"]
    assert server.app.history(tab.js("sessionStorage.getItem('scratchgpt-session')"))[0]["user"] == "the cat"

    # the temperature slider, moved with the keyboard to 0: greedy, so the reply is what chat says
    tab.js("document.getElementById('reset').click()")                  # (a fresh conversation first)
    wait_until(lambda: tab.js("document.querySelectorAll('.msg').length") == 0)
    tab.click("#temperature")
    tab.press("Home", "Home", 36)
    assert tab.js("document.getElementById('temperature-value').textContent") == "0.00"
    greedy = send_message(tab, "the dog")
    model, tok, alpaca = load_chat_model(run_dir)
    import io
    expected = Chat(model, tok, alpaca, max_new_tokens=40, temperature=0.0, out=io.StringIO()).reply("the dog")
    assert greedy["reply"] == expected and "temperature 0 ·" in greedy["meta"]

    # another tab is another conversation; a reload of this one keeps its own
    other = chromium.new_tab(url)
    session_of = "sessionStorage.getItem('scratchgpt-session')"
    assert other.js(session_of) != tab.js(session_of)
    assert other.js("document.querySelectorAll('.msg').length") == 0
    tab.goto(url)
    wait_until(lambda: tab.js("document.querySelectorAll('.msg').length") == 2)
    assert tab.js("document.querySelector('.msg.bot').textContent") == expected

    # reset: the page and the server forget the conversation
    tab.click("#reset")
    wait_until(lambda: tab.js("document.querySelectorAll('.msg').length") == 0)
    assert "cleared" in tab.js("document.getElementById('log').textContent")
    session = tab.js("sessionStorage.getItem('scratchgpt-session')")
    assert server.app.history(session) == []

    # bad input from the page gets the server's message
    tab.js("document.getElementById('top-k').value = -3")
    tab.click("#message")
    tab.type("the mat")
    tab.press("Enter", "Enter", 13)
    wait_until(lambda: tab.js("document.querySelector('.msg.error')") is not None)
    assert "top_k must be an integer from 0" in tab.js("document.querySelector('.msg.error').textContent")


# ---- the README's screenshot -------------------------------------------------------------------
def take_screenshot(path):
    """A tiny model taught three short conversations in the Alpaca format, answering in the page."""
    import itertools

    import numpy as np

    import scratchgpt as sg
    from scratchgpt import finetune as ft
    from scratchgpt.chat import Chat
    from scratchgpt.serve import ChatApp, make_server
    from scratchgpt.tokenizer import BPETokenizer
    pairs = [("Say hi.", "Hi there! I am a small GPT written from scratch."),
             ("What is two plus two?", "Two plus two is four."),
             ("Name a prime number.", "Seven is a prime number.")]
    text = ft.PREAMBLE + " ### Instruction: Response: " + " ".join(u + " " + r for u, r in pairs)
    tok = BPETokenizer.train(text, 400)
    model = sg.GPTModel(sg.GPTConfig(vocab_size=tok.vocab_size, context_length=160, emb_dim=48, n_heads=2,
                                     n_layers=2), seed=0)
    # every order of the three questions, each asked after the earlier turns, as the page's prompts are
    render = Chat(model, tok, alpaca=True).render
    seqs = [tok.encode(render(list(order[:k]), order[k][0]) + order[k][1]) + [tok.eot_id]
            for order in itertools.permutations(pairs) for k in range(3)]
    T = max(map(len, seqs))
    batch = np.array([s + [tok.eot_id] * (T + 1 - len(s)) for s in seqs])
    opt = sg.AdamW(model, lr=1e-2, weight_decay=0.0)
    for _ in range(150):
        model.loss(batch[:, :-1], batch[:, 1:])
        model.zero_grad()
        model.backward()
        opt.step()
    app = ChatApp(model, tok, alpaca=True, max_new_tokens=40, temperature=0.0, top_k=40, name="tiny-sft")
    srv = make_server(app, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    browser = Chromium(find_chromium(), width=900, height=560)
    try:
        tab = browser.new_tab("http://%s:%d/" % srv.server_address[:2])
        for message in ("Say hi.", "What is two plus two?"):
            send_message(tab, message)
        tab.click("#message")
        tab.type("Name a prime number.")
        time.sleep(0.3)
        tab.screenshot(path)
    finally:
        browser.close()
        srv.shutdown()
    print(f"wrote {path}")


if __name__ == "__main__":
    take_screenshot(sys.argv[1] if len(sys.argv) > 1 else "docs/serve.png")
