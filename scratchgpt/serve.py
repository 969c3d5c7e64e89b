"""`scratchgpt serve`: a chat page in the browser, served from this machine.

    scratchgpt serve --out-dir out/sft              # an instruction-tuned run answers in turns
    scratchgpt serve --gpt2-dir gpt2 --port 8080    # GPT-2 itself continues the text
    scratchgpt serve --hf-dir Qwen3-0.6B            # so does a Llama 3 or Qwen3 Hugging Face folder
    # then open http://127.0.0.1:8000 (or the port given)

The page (scratchgpt/assets/chat.html, one self-contained file: no CDN, works offline) sends
each message to POST /api/chat and shows the reply as it is generated. The conversation, the
prompt format and the cropping to the context window are `scratchgpt chat`'s (chat.Chat); the
tokens come from generate.generate with the KV cache, one at a time, each sent to the page as
a Server-Sent Event as soon as it is sampled.

There is one model and any number of browser tabs. Each tab makes up a session id, and the
server keeps one conversation per session id. Replies are generated one at a time in the order
the requests came (a queue, so two replies never mix); a request that has to wait is told how
many replies are ahead of it.

The HTTP interface (JSON in; JSON or an event stream out):

    GET  /                          the page
    GET  /api/info                  the model and the default settings
    GET  /api/history?session=ID    the conversation so far: {"turns": [{"user", "reply"}]}
    POST /api/chat   {"session", "message", "temperature"?, "top_k"?, "max_new_tokens"?}
                     -> text/event-stream: "queued" {position}, "note" {text}, "token" {text}
                        (the reply as it grows), then "done" {reply, tokens, seconds, ...}
                        (or "error" {error} if generation itself failed)
    POST /api/reset  {"session"}    forget that conversation

Bad input (a missing message, a temperature that is not a number >= 0, ...) gets status 400
and {"error": "what was wrong"}.
"""
import json
import math
import os
import re
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from scratchgpt.chat import Chat, load_chat_model

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "chat.html")
SESSION_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_BODY = 1 << 20               # bytes of JSON a request may send
MAX_MESSAGE = 20_000             # characters in one message (longer ones are cropped to the context anyway)
MAX_TEMPERATURE = 5.0


class BadRequest(ValueError):
    """A request the client must fix: answered with 400 and the message."""


class TurnQueue:
    """First come, first served: one reply is generated at a time, the others wait their turn.

    take() hands out numbered tickets; wait(ticket) returns when every earlier ticket is done();
    every ticket taken must be done() exactly once."""

    def __init__(self):
        self.cond = threading.Condition()
        self.next_ticket, self.serving = 0, 0

    def take(self):
        with self.cond:
            self.next_ticket += 1
            return self.next_ticket - 1

    def wait(self, ticket, on_wait=None):
        """Block until it is `ticket`'s turn; on_wait(replies ahead) is called whenever that number changes."""
        with self.cond:
            shown = None
            while ticket != self.serving:
                if on_wait is not None and ticket - self.serving != shown:
                    shown = ticket - self.serving
                    on_wait(shown)
                self.cond.wait()

    def done(self):
        with self.cond:
            self.serving += 1
            self.cond.notify_all()


class ChatApp:
    """One model, one queue, one chat.Chat (conversation + random generator) per session id."""

    def __init__(self, model, tokenizer, alpaca, max_new_tokens=None, temperature=0.7, top_k=40, seed=0,
                 max_sessions=100, name="model"):
        first = Chat(model, tokenizer, alpaca, max_new_tokens, temperature, top_k, seed)
        self.model = first.model                 # LoRA merged once; every session shares these weights
        self.template = first                    # renders a lone message, to check it can be encoded
        self.tok, self.alpaca, self.seed, self.name = tokenizer, alpaca, seed, name
        self.defaults = {"temperature": temperature, "top_k": top_k, "max_new_tokens": first.max_new_tokens}
        self.queue = TurnQueue()
        self.sessions = OrderedDict()            # session id -> Chat, least recently used first
        self.sessions_lock = threading.Lock()
        self.max_sessions = max_sessions

    def chat(self, session):
        """The session's Chat, made on first use; the least recently used is forgotten beyond max_sessions."""
        with self.sessions_lock:
            chat = self.sessions.pop(session, None)
            if chat is None:
                chat = Chat(self.model, self.tok, self.alpaca, self.defaults["max_new_tokens"],
                            self.defaults["temperature"], self.defaults["top_k"], self.seed)
            self.sessions[session] = chat
            while len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)
            return chat

    def reset(self, session):
        with self.sessions_lock:
            chat = self.sessions.get(session)
            if chat is not None:
                chat.history = []

    def history(self, session):
        with self.sessions_lock:
            chat = self.sessions.get(session)
            return [] if chat is None else [{"user": u, "reply": r} for u, r in chat.history]

    def info(self):
        return {"name": self.name, "parameters": self.model.num_parameters(),
                "format": "alpaca" if self.alpaca else "plain", "context_length": self.model.cfg.context_length,
                "vocab_size": self.model.cfg.vocab_size, **self.defaults, "max_temperature": MAX_TEMPERATURE}

    # -- input checks
    def parse_chat(self, body):
        """The fields of a POST /api/chat body, checked; raises BadRequest with what was wrong."""
        session = _session(body)
        message = body.get("message")
        if not isinstance(message, str) or not message.strip():
            raise BadRequest("message must be a non-empty string")
        if len(message) > MAX_MESSAGE:
            raise BadRequest(f"message is {len(message)} characters; at most {MAX_MESSAGE} are accepted")
        try:
            self.tok.encode(self.template.render([], message))
        except ValueError as e:
            raise BadRequest(f"the message cannot be encoded by this model's tokenizer: {e}") from None
        t = _number(body, "temperature", self.defaults["temperature"], 0.0, MAX_TEMPERATURE, integer=False)
        k = _number(body, "top_k", self.defaults["top_k"], 0, self.model.cfg.vocab_size, integer=True)
        n = _number(body, "max_new_tokens", self.defaults["max_new_tokens"], 1,
                    self.model.cfg.context_length - 1, integer=True)
        return session, message, t, k, n

    # -- one reply
    def reply(self, session, message, temperature, top_k, max_new_tokens, send):
        """Wait for this request's turn, then generate the reply, calling send(event, data) for
        "queued", "note", "token" and "done". An OSError from send (the page went away) stops
        the reply; the turn then passes to the next request."""
        ticket = self.queue.take()
        gone = []

        def queued(ahead):
            try:
                send("queued", {"position": ahead})
            except OSError:
                gone.append(True)
        try:
            self.queue.wait(ticket, queued)
            if gone:
                return None
            chat = self.chat(session)
            chat.temperature, chat.top_k, chat.max_new_tokens = temperature, top_k, max_new_tokens
            chat.note = lambda msg: send("note", {"text": msg.strip("()")})
            chat.out = _EventWriter(send)
            t0 = time.perf_counter()
            text = chat.reply(message)
            tokens = len(chat.tok.encode(text)) if text else 0
            send("done", {"reply": text, "tokens": tokens, "seconds": round(time.perf_counter() - t0, 3),
                          "temperature": temperature, "top_k": top_k})
            return text
        finally:
            self.queue.done()


class _EventWriter:
    """The file Chat streams its reply to: each write becomes a "token" event. (Chat also
    writes a final newline; the page takes the reply from the "done" event.)"""

    def __init__(self, send):
        self.send = send

    def write(self, text):
        if text:
            self.send("token", {"text": text})

    def flush(self):
        pass


def _session(body):
    session = body.get("session")
    if not isinstance(session, str) or not SESSION_RE.fullmatch(session):
        raise BadRequest(f"session must be 1-64 letters, digits, '-' or '_', got {session!r}")
    return session


def _number(body, key, default, lo, hi, integer):
    """body[key] (or the default when absent or null) as an int / float in [lo, hi]."""
    v = body.get(key)
    if v is None:
        return default
    kind = "an integer" if integer else "a number"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not float(v).is_integer()):
        raise BadRequest(f"{key} must be {kind} from {lo} to {hi}, got {v!r}")
    if not math.isfinite(v) or not lo <= v <= hi:
        raise BadRequest(f"{key} must be {kind} from {lo} to {hi}, got {v!r}")
    return int(v) if integer else float(v)


# ---- HTTP --------------------------------------------------------------------------------
class ChatHandler(BaseHTTPRequestHandler):
    """The routes of the module docstring. HTTP/1.0: a reply's event stream ends when the
    connection closes, so it needs neither a length nor chunked encoding."""
    server_version = "scratchgpt-serve"

    def do_GET(self):
        url = urlsplit(self.path)
        app = self.server.app
        if url.path in ("/", "/index.html"):
            with open(PAGE, "rb") as f:
                self._send(200, f.read(), "text/html; charset=utf-8")
        elif url.path == "/api/info":
            self._json(200, app.info())
        elif url.path == "/api/history":
            try:
                session = _session({"session": (parse_qs(url.query).get("session") or [None])[0]})
            except BadRequest as e:
                return self._json(400, {"error": str(e)})
            self._json(200, {"session": session, "turns": app.history(session)})
        else:
            self._json(404, {"error": f"no such page: {url.path}"})

    def do_POST(self):
        url = urlsplit(self.path)
        app = self.server.app
        if url.path not in ("/api/chat", "/api/reset"):
            return self._json(404, {"error": f"no such endpoint: {url.path}"})
        try:
            body = self._read_json()
            if url.path == "/api/reset":
                session = _session(body)
                app.reset(session)
                return self._json(200, {"session": session, "turns": []})
            args = app.parse_chat(body)
        except BadRequest as e:
            return self._json(400, {"error": str(e)})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        try:
            app.reply(*args, send=self._event)
        except OSError:                          # the page closed the connection (e.g. its Stop button)
            pass
        except Exception as e:                   # the status line is sent: say it in the stream
            self._event("error", {"error": f"{type(e).__name__}: {e}"})
            raise

    def _read_json(self):
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise BadRequest("Content-Length is not a number") from None
        if n > MAX_BODY:
            raise BadRequest(f"the request body is {n} bytes; at most {MAX_BODY} are accepted")
        raw = self.rfile.read(n)
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"the request body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}")
        return body

    def _event(self, event, data):
        self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode("utf-8"))
        self.wfile.flush()

    def _json(self, status, obj):
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

    def _send(self, status, payload, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, fmt, *args):
        if self.server.verbose:
            super().log_message(fmt, *args)


def make_server(app, host="127.0.0.1", port=8000, verbose=False):
    """A ThreadingHTTPServer serving `app` (port 0: any free port; see server.server_address)."""
    server = ThreadingHTTPServer((host, port), ChatHandler)
    server.daemon_threads = True
    server.app, server.verbose = app, verbose
    return server


# ---- command line ------------------------------------------------------------------------
def cmd_serve(a):
    model, tok, alpaca = load_chat_model(a.out_dir, a.gpt2_dir, a.hf_dir)
    if a.format != "auto":
        alpaca = a.format == "alpaca"
    name = os.path.basename(os.path.normpath(a.out_dir or a.gpt2_dir or a.hf_dir))
    app = ChatApp(model, tok, alpaca, a.max_new_tokens, a.temperature, a.top_k, a.seed, name=name)
    server = make_server(app, a.host, a.port, verbose=not a.quiet)
    host, port = server.server_address[:2]
    kind = "instruction-tuned (Alpaca prompts)" if alpaca else "plain text continuation"
    print(f"serving a {app.model.num_parameters():,}-parameter model ({kind}) on http://{host}:{port}/ "
          "; Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()
    return 0


def register_cli(sub):
    """Add `serve` to the `scratchgpt` command's subparsers."""
    s = sub.add_parser("serve", help="a chat page in the browser; replies stream token by token")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--out-dir", help="a run folder (or .npz), e.g. one made by finetune-sft")
    src.add_argument("--gpt2-dir", help="a Hugging Face GPT-2 folder")
    src.add_argument("--hf-dir", help="a Hugging Face GPT-2, Llama or Qwen3 folder (plain continuation)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (0: any free one; the URL is printed)")
    s.add_argument("--format", default="auto", choices=["auto", "alpaca", "plain"],
                   help="prompt format (auto: alpaca when the checkpoint was instruction-tuned)")
    s.add_argument("--max-new-tokens", type=int, default=None, help="default reply length limit")
    s.add_argument("--temperature", type=float, default=0.7, help="default temperature (the page can change it)")
    s.add_argument("--top-k", type=int, default=40, help="default top-k, 0 = off (the page can change it)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true", help="do not log each request")
    s.set_defaults(func=cmd_serve)
