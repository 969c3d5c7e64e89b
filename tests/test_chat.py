"""scratchgpt/chat.py: the prompt format, the context window, streaming, commands, and the
command itself answering a piped prompt."""
import io
import os
import subprocess
import sys

import pytest

import scratchgpt as sg
from scratchgpt import checkpoint
from scratchgpt import finetune as ft
from scratchgpt.chat import Chat, _Stream, StopReply, run
from scratchgpt.tokenizer import BPETokenizer

ENTRIES = [{"instruction": "Say hi.", "input": "", "output": "Hi there!"},
           {"instruction": "What is two plus two?", "input": "", "output": "Four."}]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A tiny model instruction-tuned on two entries until it answers them, saved as a run."""
    tok = BPETokenizer.train(ft.PREAMBLE + " ### Instruction: Response: Say hi. Hi there! "
                             "What is two plus two? Four.", 300)
    model = sg.GPTModel(sg.GPTConfig(vocab_size=tok.vocab_size, context_length=96, emb_dim=32, n_heads=2,
                                     n_layers=2), seed=0)
    ft.train_instructions(model, tok, ENTRIES, ENTRIES, epochs=20, batch_size=2, lr=1e-2, eval_freq=100,
                          log=lambda *a: None)
    folder = tmp_path_factory.mktemp("sft")
    checkpoint.save(folder / "ckpt_latest.npz", model, tok,
                    train_state={"prompt_format": "alpaca", "instruction_tuned": True})
    return str(folder), model, tok


def test_chat_answers_a_piped_prompt_and_exits_cleanly(tuned):
    folder = tuned[0]
    command = os.path.join(os.path.dirname(sys.executable), "scratchgpt")    # what a user types
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([command, "chat", "--out-dir", folder, "--temperature", "0"],
                         input="Say hi.\nWhat is two plus two?\n", capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "Hi there!\nFour.\n"


def test_alpaca_turns_are_the_books_prompt(tuned):
    _, model, tok = tuned
    chat = Chat(model, tok, alpaca=True, out=io.StringIO(), note=lambda m: None)
    assert chat.render([], "Say hi.") == ft.format_prompt(ENTRIES[0])
    two = chat.render([("Say hi.", "Hi there!")], "What is two plus two?")
    assert two == ft.format_prompt(ENTRIES[0]) + "Hi there!\n\n### Instruction:\nWhat is two plus two?\n\n### Response:\n"
    plain = Chat(model, tok, alpaca=False, out=io.StringIO(), note=lambda m: None)
    assert plain.render([("a", "b")], "c") == "a\nb\nc\n"


def test_oldest_turns_are_dropped_to_fit_the_context_and_the_chat_says_so(tuned):
    _, model, tok = tuned
    notes = []
    chat = Chat(model, tok, alpaca=True, max_new_tokens=16, temperature=0, out=io.StringIO(), note=notes.append)
    chat.history = [("Say hi.", "Hi there!")] * 4
    ids = chat.prompt_ids("What is two plus two?")
    assert len(ids) <= model.cfg.context_length - 16
    assert len(chat.history) < 4 and any("dropped the oldest turn" in n for n in notes)


def test_commands_change_settings_and_reset(tuned):
    _, model, tok = tuned
    notes = []
    chat = Chat(model, tok, alpaca=True, out=io.StringIO(), note=notes.append)
    chat.history = [("x", "y")]
    assert chat.command("/temp 0") and chat.temperature == 0
    assert chat.command("/topk 5") and chat.top_k == 5
    assert chat.command("/temp hot") and chat.temperature == 0 and "needs a number" in notes[-1]
    assert chat.command("/reset") and chat.history == []
    assert not chat.command("hello")
    out = io.StringIO()
    chat.out = out
    assert run(chat, stdin=io.StringIO("/temp 0\nSay hi.\n"), interactive=False) == 0
    assert out.getvalue() == "Hi there!\n"


def test_stream_holds_back_a_stop_string_and_half_characters():
    tok = BPETokenizer.train("hello world ### x", 260)        # too few merges to make "é" one token
    out = io.StringIO()
    s = _Stream(tok, out, ("\n\n###",))
    e_bytes = tok.encode("é")
    assert len(e_bytes) == 2
    for t in tok.encode("ab "):
        s.add(t)
    s.add(e_bytes[0])
    assert out.getvalue() == "ab "                            # half of "é": nothing new yet
    s.add(e_bytes[1])
    assert out.getvalue() == "ab é"
    for t in tok.encode("\n\n"):
        s.add(t)
    assert out.getvalue() == "ab é"                           # could be the start of "\n\n###"
    with pytest.raises(StopReply):
        for t in tok.encode("### Instruction"):
            s.add(t)
    assert out.getvalue() == "ab é" and s.text == "ab é"


def test_a_classifier_is_refused():
    from scratchgpt.classifier import add_classification_head
    model = add_classification_head(sg.GPTModel(sg.GPTConfig(vocab_size=300, context_length=8, emb_dim=8,
                                                             n_heads=2, n_layers=1)), 2)
    with pytest.raises(ValueError, match="classifier"):
        Chat(model, BPETokenizer.train("ab", 257), alpaca=False)
