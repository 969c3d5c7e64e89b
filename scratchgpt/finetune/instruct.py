"""Chapter 7: instruction fine-tuning, Alpaca prompt format (see scratchgpt.finetune's docstring)."""
import json
import os
import re

import numpy

from scratchgpt import backend
from scratchgpt.finetune.classify import split_sentences
from scratchgpt.finetune.common import IGNORE_INDEX, timed_step
from scratchgpt.optim import AdamW, TrainableParams

# ---- chapter 7: data ---------------------------------------------------------------------
PREAMBLE = ("Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.")
RESPONSE_HEADER = "\n\n### Response:\n"


def format_input(entry):
    """The book's Alpaca-style prompt: preamble, instruction and (when present) input."""
    instruction_text = f"{PREAMBLE}\n\n### Instruction:\n{entry['instruction']}"
    input_text = f"\n\n### Input:\n{entry['input']}" if entry.get("input") else ""
    return instruction_text + input_text


def format_prompt(entry):
    """What the model is given: format_input(entry) + "\\n\\n### Response:\\n"."""
    return format_input(entry) + RESPONSE_HEADER


def load_instruction_json(path):
    """A JSON list of {"instruction", "input" (optional), "output"} (the book's file as is)."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path} must hold a non-empty JSON list of {{instruction, input, output}} objects")
    for n, e in enumerate(data):
        if not isinstance(e, dict) or not isinstance(e.get("instruction"), str) or not isinstance(e.get("output"), str):
            raise ValueError(f"{path}: entry {n} needs string 'instruction' and 'output' fields, got {e!r:.120}")
    return data


def split_instructions(entries, seed=None, fractions=(0.85, 0.1)):
    """The book's split: the first 85% train, the next 10% test, the last 5% validation
    (shuffled with `seed` first when given). Returns train, val, test."""
    entries = list(entries)
    if seed is not None:
        order = numpy.random.default_rng(seed).permutation(len(entries))
        entries = [entries[i] for i in order]
    n_train, n_test = int(len(entries) * fractions[0]), int(len(entries) * fractions[1])
    return entries[:n_train], entries[n_train + n_test:], entries[n_train:n_train + n_test]


def _short_title(title):
    return re.sub(r"\s*\([^)]*\)$", "", title)          # "Belt (clothing)" -> "Belt"


def wikipedia_instructions(n_articles=None, seed=0, max_response_chars=200):
    """The offline default: instructions about Wikipedia's vital articles (the corpus's JSON).

    Per article: "Describe X in one sentence." -> its short description; "What is X?"
    ("Who is X?" for people) -> the first sentence of its summary; and, with the summary's
    first sentence as input, "Which area of knowledge is this text about?" -> its topic.
    Returns a list of entries (several per article, articles in a seeded order, so a split
    by position holds whole articles out).
    """
    from scratchgpt.corpora.wikipedia import load_articles
    articles = load_articles()
    order = numpy.random.default_rng(seed).permutation(len(articles))
    if n_articles is not None:
        order = order[:n_articles]
    entries = []
    for i in order:
        a = articles[i]
        title = _short_title(a["title"])
        extract = " ".join(a.get("extract", "").split())
        first = split_sentences(extract)[0] if extract else ""
        desc = (a.get("description") or "").strip()
        if desc and len(desc) <= max_response_chars:
            entries.append({"instruction": f"Describe {title} in one sentence.", "input": "",
                            "output": desc[0].upper() + desc[1:]})
        if first and len(first) <= max_response_chars:
            who = "Who" if a.get("topic") == "People" else "What"
            entries.append({"instruction": f"{who} is {title}?", "input": "", "output": first})
            topic = a.get("topic")
            if topic and topic != "Uncategorized":
                entries.append({"instruction": "Which area of knowledge is this text about?",
                                "input": first, "output": topic})
    return entries


def encode_instruction(entry, tokenizer):
    """(prompt ids + response ids, number of prompt ids). The two parts are encoded apart, so
    the boundary is exactly where generation starts from the prompt alone."""
    prompt = tokenizer.encode(format_prompt(entry))
    return prompt + tokenizer.encode(entry["output"]), len(prompt)


def collate_instructions(batch, pad_id, ignore_index=IGNORE_INDEX, allowed_max_length=None):
    """The book's custom_collate_fn, with the prompt masked too (its exercise 7.2).

    batch: [(ids, n_prompt)]. Each item gets one pad_id (<|endoftext|>, the end of the
    response), then pads to the batch's longest; inputs = ids[:-1], targets = ids[1:];
    targets inside the prompt (the first n_prompt - 1 of them) and after the first pad become
    ignore_index. Returns (inputs, targets), int64 (B, T), truncated to allowed_max_length.
    """
    width = max(len(ids) + 1 for ids, _ in batch)
    inputs = numpy.full((len(batch), width - 1), pad_id, dtype=numpy.int64)
    targets = numpy.full((len(batch), width - 1), ignore_index, dtype=numpy.int64)
    for b, (ids, n_prompt) in enumerate(batch):
        seq = list(ids) + [pad_id]                                   # the response ends with one eot
        inputs[b, :len(seq) - 1] = seq[:-1]
        targets[b, :len(seq) - 1] = seq[1:]
        targets[b, :max(n_prompt - 1, 0)] = ignore_index             # targets that are prompt tokens
    if allowed_max_length is not None:
        inputs, targets = inputs[:, :allowed_max_length], targets[:, :allowed_max_length]
    return inputs, targets


def instruction_batches(encoded, batch_size, pad_id, max_length, shuffle=False, rng=None, drop_last=False):
    order = rng.permutation(len(encoded)) if shuffle else numpy.arange(len(encoded))
    for s in range(0, len(order), batch_size):
        rows = [encoded[i] for i in order[s:s + batch_size]]
        if drop_last and len(rows) < batch_size:
            return
        yield collate_instructions(rows, pad_id, allowed_max_length=max_length)


# ---- chapter 7: loss, training, responses ------------------------------------------------
def require_eot(tokenizer):
    if tokenizer.eot_id is None:
        raise ValueError("instruction fine-tuning needs a tokenizer with <|endoftext|> to end responses "
                         "(a BPE: --tokenizer gpt2 or bpe:N); this one has none")
    return tokenizer.eot_id


def response_loss(model, encoded, pad_id, batch_size=8, max_batches=None):
    """Mean cross-entropy per response token (prompt and padding excluded) over the examples."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for n, (x, y) in enumerate(instruction_batches(encoded, batch_size, pad_id, model.cfg.context_length)):
            if max_batches is not None and n >= max_batches:
                break
            kept = int((y != IGNORE_INDEX).sum())
            if kept:
                total += model.loss(x, y) * kept
                count += kept
    finally:
        model.train(was_training)
    return total / max(count, 1)


def train_instructions(model, tokenizer, train, val, epochs=2, batch_size=8, lr=5e-5, weight_decay=0.1,
                       eval_freq=5, eval_iter=5, seed=0, grad_clip=None, max_steps=None, log=print):
    """The book's train_model_simple on instruction data: AdamW over the trainable parameters,
    train/val response loss every eval_freq steps (eval_iter batches). Returns a history dict."""
    pad_id = require_eot(tokenizer)
    T = model.cfg.context_length
    train_set = [encode_instruction(e, tokenizer) for e in train]
    val_set = [encode_instruction(e, tokenizer) for e in val]
    params = TrainableParams(model)
    opt = AdamW(params, lr=lr, weight_decay=weight_decay)
    rng = numpy.random.default_rng(seed)
    hist = {"steps": [], "train_losses": [], "val_losses": [], "step_times": [], "tokens_seen": []}
    step = tokens = 0

    def evaluate(epoch):
        tr = response_loss(model, train_set, pad_id, batch_size, eval_iter)
        va = response_loss(model, val_set, pad_id, batch_size, eval_iter)
        hist["steps"].append(step)
        hist["train_losses"].append(tr)
        hist["val_losses"].append(va)
        hist["tokens_seen"].append(tokens)
        log(f"epoch {epoch + 1} step {step}: train loss {tr:.3f}, val loss {va:.3f}")

    evaluate(0)                                      # where the curves start
    model.train()
    for epoch in range(epochs):
        for x, y in instruction_batches(train_set, batch_size, pad_id, T, True, rng, True):
            _, dt = timed_step(model, lambda: _lm_loss_and_backward(model, x, y), params, opt, grad_clip)
            hist["step_times"].append(dt)
            tokens += x.size
            step += 1
            if step % eval_freq == 0:
                evaluate(epoch)
            if max_steps is not None and step >= max_steps:
                return hist
    return hist


def _lm_loss_and_backward(model, x, y):
    loss = model.loss(x, y)
    model.backward()
    return loss


def generate_response(model, tokenizer, entry, max_new_tokens=64, temperature=0.0, top_k=None, seed=0):
    """The model's response to an entry's prompt (greedy by default), up to <|endoftext|>."""
    from scratchgpt.generate import generate
    from scratchgpt.lora import merge_lora
    model = merge_lora(model)                     # the cached generation path knows no adapters
    prompt = tokenizer.encode(format_prompt(entry))[-model.cfg.context_length:]
    out = generate(model, numpy.asarray([prompt]), max_new_tokens, temperature, top_k,
                   rng=backend.rng(seed), eos_id=tokenizer.eot_id)
    new = [int(t) for t in backend.to_numpy(out)[0, len(prompt):]]
    if tokenizer.eot_id in new:
        new = new[:new.index(tokenizer.eot_id)]
    return tokenizer.decode(new).split("\n\n###")[0].strip()


