"""`scratchgpt chat`: talk to a model; the reply is streamed token by token.

    scratchgpt chat --out-dir out/sft          # a run (an instruction-tuned one answers in turns)
    scratchgpt chat --gpt2-dir gpt2            # GPT-2 itself (it continues the text)
    echo "What is a prime number?" | scratchgpt chat --out-dir out/sft   # one reply per line, then exit

A model fine-tuned on instructions (`finetune-sft` stores prompt_format "alpaca" in its
checkpoint) gets each turn wrapped in the book's Alpaca prompt; earlier turns come before it
as more "### Instruction: / ### Response:" pairs. Other models see the conversation as plain
text and continue it. When the conversation no longer fits the context window (keeping room
for the reply), the oldest turns are dropped, and the chat says so.

Commands: /reset (forget the conversation), /temp X (0 = greedy), /topk K (0 = off), /help.
Ctrl-C stops a reply and keeps the program running; Ctrl-D (end of input) leaves.
"""
import argparse
import sys

import numpy

from scratchgpt import backend
from scratchgpt.command import run as run_command

STOP_STRINGS = ("\n\n###",)        # an Alpaca model starting the next section has finished
HELP = "commands: /reset  /temp X  /topk K  /help; Ctrl-C stops a reply, Ctrl-D leaves"


class StopReply(Exception):
    """Raised from the streaming callback once a stop string has been produced."""


class Chat:
    """The conversation and the sampling settings; `reply(text)` streams one answer to `out`."""

    def __init__(self, model, tokenizer, alpaca, max_new_tokens=None, temperature=0.7, top_k=40,
                 seed=0, out=sys.stdout, note=None):
        from scratchgpt.lora import merge_lora
        if model.extensions.get("num_classes"):
            raise ValueError(f"this model is a classifier ({model.extensions['num_classes']} classes, chapter 6); "
                             "chat needs a language model")
        self.model = merge_lora(model).eval()       # the KV-cached generation runs on plain weights
        self.tok, self.alpaca = tokenizer, alpaca
        ctx = model.cfg.context_length
        self.max_new_tokens = max_new_tokens or max(1, min(256, ctx // 2))
        self.temperature, self.top_k = temperature, top_k
        self.rng = backend.rng(seed)
        self.out = out
        self.note = note or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.history = []                           # [(user, reply)]
        self.prefix = ""                            # written before each reply ("gpt> " on a terminal)

    # -- the prompt
    def render(self, history, user):
        if self.alpaca:
            from scratchgpt.finetune import PREAMBLE
            turns = [(u, r) for u, r in history] + [(user, "")]
            return PREAMBLE + "".join(f"\n\n### Instruction:\n{u}\n\n### Response:\n{r}" for u, r in turns)
        return "".join(f"{u}\n{r}\n" for u, r in history) + user + "\n"

    def prompt_ids(self, user):
        """Token ids of the conversation + the new turn. Oldest turns are dropped until there
        is room for a full reply; a single turn longer than the window keeps its end."""
        ctx = self.model.cfg.context_length
        budget = max(1, ctx - self.max_new_tokens)
        ids = self.tok.encode(self.render(self.history, user))
        while len(ids) > budget and self.history:
            self.history.pop(0)
            self.note(f"(the conversation no longer fits the {ctx}-token context window with room "
                      f"for a reply: dropped the oldest turn, {len(self.history)} left)")
            ids = self.tok.encode(self.render(self.history, user))
        if len(ids) >= ctx:
            self.note(f"(this message is {len(ids)} tokens; only its last {ctx - 1} fit the context window)")
            ids = ids[-(ctx - 1):]
        return ids

    # -- one reply
    def reply(self, user):
        """Generate and stream the answer to `user`; returns the reply text (kept in history)."""
        from scratchgpt.generate import generate
        prompt = self.prompt_ids(user)
        self.out.write(self.prefix)
        stream = _Stream(self.tok, self.out, STOP_STRINGS if self.alpaca else ())
        try:
            generate(self.model, numpy.asarray([prompt]), self.max_new_tokens, self.temperature,
                     self.top_k or None, rng=self.rng, eos_id=self.tok.eot_id,
                     on_token=lambda ids: stream.add(int(ids[0])))
        except StopReply:
            pass
        except KeyboardInterrupt:
            stream.finish()
            self.out.write(" [stopped]\n")
            self.out.flush()
            self.history.append((user, stream.text))
            return stream.text
        stream.finish()
        self.out.write("\n")
        self.out.flush()
        self.history.append((user, stream.text))
        return stream.text

    # -- commands
    def command(self, line):
        """Handle a /command; returns True when `line` was one."""
        if not line.startswith("/"):
            return False
        name, _, arg = line.partition(" ")
        try:
            if name == "/reset":
                self.history = []
                self.note("(conversation cleared)")
            elif name == "/temp":
                t = float(arg)
                if t < 0:
                    raise ValueError
                self.temperature = t
                self.note(f"(temperature {t:g}{', greedy' if t == 0 else ''})")
            elif name == "/topk":
                k = int(arg)
                if k < 0:
                    raise ValueError
                self.top_k = k
                self.note(f"(top-k {k if k else 'off'})")
            elif name == "/help":
                self.note(HELP)
            else:
                self.note(f"unknown command {name!r}; {HELP}")
        except ValueError:
            self.note(f"{name} needs a number >= 0, got {arg!r}")
        return True


class _Stream:
    """Writes the reply as it is generated: decodes all ids so far and prints what is new,
    holding back an incomplete UTF-8 character (BPE tokens can split one) and any text that
    could be the start of a stop string."""

    def __init__(self, tok, out, stops):
        self.tok, self.out, self.stops = tok, out, stops
        self.ids, self.shown, self.text = [], 0, ""

    def add(self, token):
        if token == self.tok.eot_id:
            return
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        for s in self.stops:
            cut = text.find(s)
            if cut >= 0:
                self.text = text[:cut]
                self._show(self.text)
                raise StopReply
        self.text = text
        if text.endswith("\ufffd"):                      # half a character: wait for the rest
            return
        hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self._show(text[:len(text) - hold])

    def _show(self, text):
        if len(text) > self.shown:
            self.out.write(text[self.shown:])
            self.out.flush()
            self.shown = len(text)

    def finish(self):
        self.text = self.text.rstrip("\ufffd")
        self._show(self.text)


def load_chat_model(out_dir=None, gpt2_dir=None, hf_dir=None):
    """(model, tokenizer, alpaca?) from a run folder / .npz, GPT-2's weights or a Hugging Face folder."""
    if hf_dir:
        from scratchgpt.hf import load_hf_with_tokenizer
        return (*load_hf_with_tokenizer(hf_dir), False)
    from scratchgpt.finetune import load_base
    model, tok, state = load_base(out_dir, gpt2_dir)
    return model, tok, (state or {}).get("prompt_format") == "alpaca"


def run(chat, stdin=None, interactive=None):
    """The read-reply loop; returns the exit status (0 at end of input)."""
    stdin = stdin or sys.stdin
    interactive = stdin.isatty() if interactive is None else interactive
    if interactive:
        kind = "instruction-tuned (Alpaca prompts)" if chat.alpaca else "plain text continuation"
        chat.note(f"chatting with a {chat.model.num_parameters():,}-parameter model, {kind}; {HELP}")
        chat.prefix = "gpt> "
    while True:
        try:
            line = input("you> ") if interactive else stdin.readline()
        except EOFError:
            line = None
        except KeyboardInterrupt:
            chat.note("\n(Ctrl-D leaves)")
            continue
        if line is None or (not interactive and line == ""):
            if interactive:
                chat.note("")
            return 0
        line = line.rstrip("\n")
        if not line.strip() or chat.command(line.strip()):
            continue
        chat.reply(line)


def cmd_chat(a):
    model, tok, alpaca = load_chat_model(a.out_dir, a.gpt2_dir, a.hf_dir)
    if a.format != "auto":
        alpaca = a.format == "alpaca"
    chat = Chat(model, tok, alpaca, a.max_new_tokens, a.temperature, a.top_k, a.seed)
    return run(chat)


def register_cli(sub):
    """Add `chat` to the `scratchgpt` command's subparsers."""
    c = sub.add_parser("chat", help="talk to a model; replies stream token by token")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--out-dir", help="a run folder (or .npz), e.g. one made by finetune-sft")
    src.add_argument("--gpt2-dir", help="a Hugging Face GPT-2 folder")
    src.add_argument("--hf-dir", help="a Hugging Face GPT-2, Llama or Qwen3 folder (plain continuation)")
    c.add_argument("--format", default="auto", choices=["auto", "alpaca", "plain"],
                   help="prompt format (auto: alpaca when the checkpoint was instruction-tuned)")
    c.add_argument("--max-new-tokens", type=int, default=None, help="reply length limit (default min(256, context/2))")
    c.add_argument("--temperature", type=float, default=0.7)
    c.add_argument("--top-k", type=int, default=40)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_chat)


def main(argv=None):
    """`python -m scratchgpt.chat ...` (the same as `scratchgpt chat ...`)."""
    p = argparse.ArgumentParser(prog="python -m scratchgpt.chat")
    sub = p.add_subparsers(dest="command")
    register_cli(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "chat":
        argv = ["chat"] + argv
    return run_command(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
