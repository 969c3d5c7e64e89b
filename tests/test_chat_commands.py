"""scratchgpt/chat.py at its edges: Ctrl-C during a reply and at the prompt, a single turn
longer than the context window, /help and unknown commands."""
import builtins
import io

import numpy as np
import pytest

import scratchgpt as sg
from scratchgpt.chat import HELP, Chat, run
from scratchgpt.tokenizer import BPETokenizer


@pytest.fixture(scope="module")
def small():
    tok = BPETokenizer.train("hello there, how are you? fine, thanks.", 270)
    model = sg.GPTModel(sg.GPTConfig(vocab_size=tok.vocab_size, context_length=16, emb_dim=16, n_heads=2,
                                     n_layers=1), seed=0)
    return model, tok


class InterruptOnce(io.StringIO):
    """A terminal whose user presses Ctrl-C while the `n`-th piece of a reply is written."""

    def __init__(self, n):
        super().__init__()
        self.writes, self.n = 0, n

    def write(self, text):
        self.writes += 1
        if self.writes == self.n:
            raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_stops_a_reply_keeps_its_start_and_the_chat_goes_on(small):
    model, tok = small
    out = InterruptOnce(4)              # the prefix, two streamed pieces, then Ctrl-C
    chat = Chat(model, tok, alpaca=False, max_new_tokens=8, temperature=0, out=out, note=lambda m: None)
    try:
        text = chat.reply("hello")
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C during a reply left the chat")
    assert out.getvalue().endswith(" [stopped]\n")
    shown = out.getvalue()[: -len(" [stopped]\n")]
    assert text and shown == text                       # what was on screen is what was kept
    assert chat.history == [("hello", text)]
    full = Chat(model, tok, alpaca=False, max_new_tokens=8, temperature=0, out=io.StringIO(),
                note=lambda m: None).reply("hello")
    assert full.startswith(text) and len(full) > len(text)
    chat.reply("fine")
    assert chat.history[-1][0] == "fine"                          # the next turn is answered


def test_ctrl_c_at_the_prompt_does_not_leave(small, monkeypatch):
    model, tok = small
    notes = []
    chat = Chat(model, tok, alpaca=False, max_new_tokens=2, temperature=0, out=io.StringIO(), note=notes.append)
    answers = iter([KeyboardInterrupt, "hello", EOFError])

    def fake_input(prompt):
        a = next(answers)
        if isinstance(a, type) and issubclass(a, BaseException):
            raise a
        return a

    monkeypatch.setattr(builtins, "input", fake_input)
    assert run(chat, stdin=io.StringIO(), interactive=True) == 0
    assert "\n(Ctrl-D leaves)" in notes
    assert [u for u, _ in chat.history] == ["hello"]          # it kept going after Ctrl-C


def test_a_single_turn_longer_than_the_context_keeps_its_end(small):
    model, tok = small
    notes = []
    chat = Chat(model, tok, alpaca=False, max_new_tokens=4, temperature=0, out=io.StringIO(), note=notes.append)
    user = "hello there, how are you? " * 6
    full = tok.encode(chat.render([], user))
    assert len(full) > model.cfg.context_length
    ids = chat.prompt_ids(user)
    assert ids == full[-(model.cfg.context_length - 1):]
    assert any(f"only its last {model.cfg.context_length - 1} fit" in n for n in notes)
    assert isinstance(chat.reply(user), str)                 # and it still answers


def test_help_and_unknown_commands_say_what_exists(small):
    model, tok = small
    notes = []
    chat = Chat(model, tok, alpaca=False, out=io.StringIO(), note=notes.append)
    chat.history = [("a", "b")]
    assert chat.command("/help") and notes[-1] == HELP
    assert chat.command("/frobnicate now") and notes[-1].startswith("unknown command '/frobnicate'")
    assert HELP in notes[-1]
    assert chat.history == [("a", "b")] and chat.temperature == 0.7      # nothing else changed
    assert chat.command("/topk -1") and chat.top_k == 40 and "needs a number >= 0" in notes[-1]
