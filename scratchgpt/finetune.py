"""Fine-tuning a pretrained GPT: text classification (chapter 6) and instruction following (chapter 7).

Both start from a pretrained model (GPT-2's weights, a run of `scratchgpt train`, or a small
BPE model `pretrain_base` trains on our corpora) and train part of it, or LoRA adapters
(appendix E, scratchgpt.lora), with AdamW on the trainable parameters only.

Chapter 6, classification:
    data = corpus_passages_dataset(per_class=300)            # or load_csv_dataset("spam.csv")
    model = add_classification_head(model, len(data.labels)) # score: emb_dim -> num_classes
    model.freeze(trainable_prefixes(model.cfg, "last-block"))# last block, final norm, head
    history = train_classifier(model, tok, data, epochs=5)

    The class is read off the hidden state of the *last real token* of each text: texts are
    padded at the end (with <|endoftext|>, as the book does, or id 0 for a character tokenizer,
    which has none) and, attention being causal, a token never sees the padding after it. The
    book takes the last position of the padded batch instead, which for every text but the
    longest is a pad token (that works too, the pad attends to the whole text, but the answer
    then depends on how much padding a text got); we keep the lengths and take position
    length - 1, as Hugging Face's GPT2ForSequenceClassification does. Padding is per batch.

Chapter 7, instruction following:
    entries = load_instruction_json("instruction-data.json") # or wikipedia_instructions()
    inputs, targets = collate_instructions([encode_instruction(e, tok) for e in batch], tok.eot_id)
    history = train_instructions(model, tok, train, val, epochs=2)

    The Alpaca prompt (format_input) + "### Response:" is the prompt; the output and one
    <|endoftext|> are the response. The collate pads with <|endoftext|>, shifts the targets by
    one and sets ignore_index (-100) on every target inside the prompt and on the padding
    after the first <|endoftext|>, so the loss is the response's alone.

Frozen parameters: the model computes no gradient for them (GPTModel.set_trainable), and
`scratchgpt.optim.TrainableParams` hands AdamW only the trainable ones, packed into a buffer of
their own: a frozen weight is never updated nor decayed, and AdamW keeps moments only for what
trains (AdamW(model) on a model with frozen parameters raises a ValueError saying so).
"""
import csv
import dataclasses
import functools
import json
import os
import re
import sys
import time
from dataclasses import dataclass

import numpy

from scratchgpt import backend, checkpoint
from scratchgpt.backend import array_module
from scratchgpt.ops import cross_entropy_backward, cross_entropy_forward
from scratchgpt.optim import AdamW, TrainableParams

IGNORE_INDEX = -100
BASE_DIR = os.path.join("out", "finetune-base")   # where pretrain_base's model is kept by default
CHAR_PAD_ID = 0       # a character tokenizer has no <|endoftext|>; any id works (see above)


# ---- training only what is trainable (optim.TrainableParams packs those parameters for AdamW)
def trainable_prefixes(cfg, spec):
    """What trains, by name: "all", "head", "last-block" (the book's chapter 6 choice: the last
    block, the final LayerNorm and the head) or "last-N" (the last N blocks, final norm, head).

    A tied head is the token embedding: training it means a backward through every block,
    so for a tied LM head "head" and "last-N" leave it frozen.
    """
    if spec == "all":
        return None
    head = ["score"] if cfg.num_classes else ([] if cfg.tie_weights else ["lm_head.weight"])
    if spec == "head":
        n = 0
    elif spec == "last-block":
        n = 1
    elif re.fullmatch(r"last-\d+", spec):
        n = int(spec[5:])
    else:
        raise ValueError(f"unknown --trainable {spec!r}: use all, head, last-block or last-N (e.g. last-2)")
    if n > cfg.n_layers:
        raise ValueError(f"--trainable {spec}: the model has only {cfg.n_layers} blocks")
    blocks = [f"transformer.h.{i}" for i in range(cfg.n_layers - n, cfg.n_layers)]
    names = blocks + (["transformer.ln_f"] if n else []) + head
    if not names:
        raise ValueError(f"--trainable {spec} leaves nothing to train for a tied LM head: use last-1 or all")
    return names


def rebuild_model(model, seed=0, **changes):
    """A model with a changed config (a classification head, ...) that keeps every weight the
    two configs share; new parameters get their usual initialisation."""
    cfg = dataclasses.replace(model.cfg, **changes)
    new = type(model)(cfg, seed=seed, dtype=model.dtype)
    for k, v in model.params.items():
        if k in new.params and new.params[k].shape == v.shape:
            new.params[k][...] = v
    return new


def timed_step(model, loss_and_backward, params, opt, grad_clip=None):
    """One step (zero_grad, forward + backward, AdamW); returns (loss, seconds)."""
    t0 = time.perf_counter()
    model.zero_grad()
    loss = loss_and_backward()
    params.step(opt, grad_clip)
    return loss, time.perf_counter() - t0


# ---- chapter 6: data ---------------------------------------------------------------------
@dataclass
class ClassificationData:
    """Texts and integer labels per split; labels[i] is the name of class i."""
    train: list
    val: list
    test: list
    labels: list

    def summary(self):
        return (f"{len(self.train)} train / {len(self.val)} val / {len(self.test)} test examples, "
                f"classes {self.labels}")


_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "c", "ca", "no",
                  "mt", "gen", "col", "lt", "prof", "rev", "approx", "fig", "vol", "u.s", "u.k", "inc",
                  "ltd", "co", "ft", "sgt", "capt", "gov", "sen", "al", "b", "d", "op", "cf"}
_SENTENCE_END = re.compile(r"[.!?][\"')\]\u201d\u2019]*\s+")


def split_sentences(text):
    """Cut text after . ! ? followed by space, except after an abbreviation or an initial."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if text[m.start()] == ".":
            word = text[start:m.start() + 1].rsplit(None, 1)[-1].rstrip(".").lower()
            if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()) or re.fullmatch(r"(\w\.)+\w", word):
                continue
        out.append(text[start:m.end()].strip())
        start = m.end()
    if text[start:].strip():
        out.append(text[start:].strip())
    return out


@functools.lru_cache(maxsize=None)
def corpus_passages(name, min_chars=60, max_chars=300):
    """Every passage of a few consecutive sentences (min_chars..max_chars) in a corpus.

    Paragraphs are the blank-line separated blocks; in Shakespeare the lines without a
    lower-case letter (speaker names such as "CAESAR.") are dropped, so the speech is left.
    """
    from scratchgpt.corpora import load_text
    passages = []
    for para in load_text(name).split("\n\n"):
        lines = para.split("\n")
        if name == "shakespeare":
            lines = [line for line in lines if any(c.islower() for c in line)]
        para = " ".join(" ".join(lines).split())
        cur = ""
        for s in split_sentences(para):
            if cur and len(cur) + 1 + len(s) > max_chars:
                if len(cur) >= min_chars:
                    passages.append(cur)
                cur = s
            else:
                cur = f"{cur} {s}".strip()
        if min_chars <= len(cur) <= max_chars:
            passages.append(cur)
    return tuple(passages)


def split_examples(by_class, seed, fractions=(0.7, 0.1)):
    """{label id: [texts]} -> train / val / test lists of (text, label), each class cut in the
    same proportions (the book's 70 / 10 / 20) and every split shuffled with `seed`."""
    rng = numpy.random.default_rng(seed)
    splits = ([], [], [])
    for label, texts in sorted(by_class.items()):
        order = rng.permutation(len(texts))
        n_train, n_val = int(fractions[0] * len(texts)), int(fractions[1] * len(texts))
        for j, i in enumerate(order):
            part = 0 if j < n_train else 1 if j < n_train + n_val else 2
            splits[part].append((texts[i], label))
    for s in splits:
        rng.shuffle(s)
    return splits


def corpus_passages_dataset(per_class=300, seed=0, corpora=("shakespeare", "wikipedia", "math")):
    """The offline default: passages from our corpora, labelled by corpus, `per_class` each
    (balanced), a fixed seeded 70 / 10 / 20 split."""
    if per_class < 10:
        raise ValueError(f"per_class must be at least 10 (for a 70/10/20 split), got {per_class}")
    rng = numpy.random.default_rng(seed)
    by_class = {}
    for label, name in enumerate(corpora):
        passages = corpus_passages(name)
        if len(passages) < per_class:
            raise ValueError(f"the {name} corpus has only {len(passages)} passages, asked for {per_class}")
        by_class[label] = [passages[i] for i in sorted(rng.choice(len(passages), per_class, replace=False))]
    return ClassificationData(*split_examples(by_class, seed), labels=list(corpora))


def load_csv_dataset(path, seed=0, fractions=(0.7, 0.1)):
    """Any CSV/TSV of texts and labels, split 70 / 10 / 20 (per class) with `seed`.

    With a header, the columns named text and label (any case, any order: the book's
    train.csv has Label,Text) are used; without one (the raw SMSSpamCollection is
    `ham<TAB>text`), of two columns the one with fewer distinct values is the label.
    Labels are kept as they are named; integer labels 0..K-1 keep their numbers.
    """
    with open(path, encoding="utf-8", newline="") as f:
        sample = f.read(65536)
        f.seek(0)
        delim = "\t" if sample.count("\t") > sample.count(",") else ","
        rows = [r for r in csv.reader(f, delimiter=delim) if r]
    if not rows:
        raise ValueError(f"{path} is empty")
    head = [c.strip().lower() for c in rows[0]]
    if "text" in head and "label" in head:
        ti, li, rows = head.index("text"), head.index("label"), rows[1:]
    else:
        if any(len(r) != 2 for r in rows):
            raise ValueError(f"{path}: without a header naming 'text' and 'label' columns every row must "
                             f"have exactly 2 columns (row 1 has {len(rows[0])})")
        li = 0 if len({r[0] for r in rows}) <= len({r[1] for r in rows}) else 1
        ti = 1 - li
    bad = [n for n, r in enumerate(rows) if len(r) <= max(ti, li)]
    if bad:
        raise ValueError(f"{path}: row {bad[0] + 2} has {len(rows[bad[0]])} columns")
    names = sorted({r[li].strip() for r in rows})
    if all(re.fullmatch(r"\d+", n) for n in names) and sorted(map(int, names)) == list(range(len(names))):
        names = sorted(names, key=int)
    if len(names) < 2:
        raise ValueError(f"{path} has a single label {names}: classification needs at least 2")
    if len(names) > 100:
        raise ValueError(f"{path} has {len(names)} distinct labels; is the label column right?")
    index = {n: i for i, n in enumerate(names)}
    by_class = {}
    for r in rows:
        by_class.setdefault(index[r[li].strip()], []).append(r[ti])
    return ClassificationData(*split_examples(by_class, seed, fractions), labels=names)


def pad_id_for(tokenizer):
    """<|endoftext|> (50256 for GPT-2, as the book pads) or, without one, CHAR_PAD_ID."""
    return tokenizer.eot_id if tokenizer.eot_id is not None else CHAR_PAD_ID


def encode_examples(examples, tokenizer, max_length):
    """[(text, label)] -> [(ids truncated to max_length, label)]; empty texts are refused."""
    out = []
    for text, label in examples:
        ids = tokenizer.encode(text)[:max_length]
        if not ids:
            raise ValueError(f"an example encodes to no tokens: {text!r}")
        out.append((ids, label))
    return out


def classification_batches(encoded, batch_size, pad_id, shuffle=False, rng=None, drop_last=False):
    """Yield (ids (B, T), lengths (B,), labels (B,)); rows padded with pad_id to the batch's
    longest text. Shuffled with `rng` when asked (the book shuffles and drops the last partial
    batch when training)."""
    order = rng.permutation(len(encoded)) if shuffle else numpy.arange(len(encoded))
    for s in range(0, len(order), batch_size):
        rows = [encoded[i] for i in order[s:s + batch_size]]
        if drop_last and len(rows) < batch_size:
            return
        lengths = numpy.array([len(ids) for ids, _ in rows], dtype=numpy.int64)
        ids = numpy.full((len(rows), lengths.max()), pad_id, dtype=numpy.int64)
        for b, (r, _) in enumerate(rows):
            ids[b, :len(r)] = r
        yield ids, lengths, numpy.array([label for _, label in rows], dtype=numpy.int64)


# ---- chapter 6: model, loss, accuracy ----------------------------------------------------
def add_classification_head(model, num_classes, seed=0):
    """The book's `model.out_head = Linear(emb_dim, num_classes)`: a model whose head is a
    fresh `score` (num_classes, emb_dim) + bias instead of the LM head; the rest is copied."""
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    return rebuild_model(model, seed=seed, num_classes=int(num_classes))


def last_token_logits(model, ids, lengths):
    """Forward, then the (B, num_classes) logits at each row's last real token."""
    logits = model(ids)                                              # (B, T, K)
    xp = array_module(logits)
    rows, pos = xp.arange(len(lengths)), xp.asarray(lengths) - 1
    return logits, logits[rows, pos]


def classifier_loss_and_backward(model, ids, lengths, labels, backward=True):
    """Mean cross-entropy of the last-token logits; with backward, d loss flows in at those
    positions only (every other position of dlogits is zero)."""
    logits, last = last_token_logits(model, ids, lengths)
    xp = array_module(logits)
    loss, cache = cross_entropy_forward(last, xp.asarray(labels))
    if backward:
        dlogits = xp.zeros_like(logits)
        dlogits[xp.arange(len(lengths)), xp.asarray(lengths) - 1] = cross_entropy_backward(1.0, cache)
        model.backward(dlogits)
    return loss


def evaluate_classifier(model, encoded, pad_id, batch_size=8, max_batches=None):
    """(accuracy, mean loss) over the examples (the first max_batches batches, if given)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    try:
        for n, (ids, lengths, labels) in enumerate(classification_batches(encoded, batch_size, pad_id)):
            if max_batches is not None and n >= max_batches:
                break
            _, last = last_token_logits(model, ids, lengths)
            pred = backend.to_numpy(last.argmax(axis=-1))
            correct += int((pred == labels).sum())
            loss_sum += cross_entropy_forward(last, array_module(last).asarray(labels))[0] * len(labels)
            total += len(labels)
    finally:
        model.train(was_training)
    return correct / max(total, 1), loss_sum / max(total, 1)


def classify_text(model, tokenizer, text, labels=None, max_length=None):
    """The book's classify_review: the predicted class (its name when labels are given)."""
    ids = tokenizer.encode(text)[:max_length or model.cfg.context_length]
    _, last = last_token_logits(model.eval(), numpy.asarray([ids]), numpy.array([len(ids)]))
    k = int(backend.to_numpy(last.argmax(axis=-1))[0])
    return labels[k] if labels else k


def train_classifier(model, tokenizer, data, epochs=5, batch_size=8, lr=5e-5, weight_decay=0.1,
                     eval_freq=50, eval_iter=5, max_length=None, seed=0, grad_clip=None, log=print):
    """The book's train_classifier_simple: AdamW over the trainable parameters, losses every
    eval_freq steps (eval_iter batches), train/val accuracy after each epoch.

    Returns a history dict: steps, train_losses, val_losses, train_accs, val_accs, step_times.
    """
    pad_id = pad_id_for(tokenizer)
    max_length = classification_max_length(model, tokenizer, data, max_length)
    train_set = encode_examples(data.train, tokenizer, max_length)
    val_set = encode_examples(data.val, tokenizer, max_length)
    params = TrainableParams(model)
    opt = AdamW(params, lr=lr, weight_decay=weight_decay)
    rng = numpy.random.default_rng(seed)
    hist = {"steps": [], "train_losses": [], "val_losses": [], "epoch_steps": [], "train_accs": [],
            "val_accs": [], "step_times": [], "examples_seen": 0, "max_length": max_length}
    step = 0

    def evaluate(epoch):
        tr = evaluate_classifier(model, train_set, pad_id, batch_size, eval_iter)[1]
        va = evaluate_classifier(model, val_set, pad_id, batch_size, eval_iter)[1]
        hist["steps"].append(step)
        hist["train_losses"].append(tr)
        hist["val_losses"].append(va)
        log(f"epoch {epoch + 1} step {step}: train loss {tr:.3f}, val loss {va:.3f}")

    evaluate(0)                                      # where the curves start
    model.train()
    for epoch in range(epochs):
        for ids, lengths, labels in classification_batches(train_set, batch_size, pad_id, True, rng, True):
            _, dt = timed_step(model, lambda: classifier_loss_and_backward(model, ids, lengths, labels),
                               params, opt, grad_clip)
            hist["step_times"].append(dt)
            hist["examples_seen"] += len(labels)
            step += 1
            if step % eval_freq == 0:
                evaluate(epoch)
        tr_acc = evaluate_classifier(model, train_set, pad_id, batch_size, eval_iter)[0]
        va_acc = evaluate_classifier(model, val_set, pad_id, batch_size, eval_iter)[0]
        hist["epoch_steps"].append(step)
        hist["train_accs"].append(tr_acc)
        hist["val_accs"].append(va_acc)
        log(f"epoch {epoch + 1}: training accuracy {tr_acc:.1%}, validation accuracy {va_acc:.1%}")
    return hist


def classification_max_length(model, tokenizer, data, max_length=None):
    """The book's: the longest training text in tokens, at most the context length."""
    longest = max(len(tokenizer.encode(t)) for t, _ in data.train)
    limit = model.cfg.context_length if max_length is None else min(max_length, model.cfg.context_length)
    return max(1, min(longest, limit))


def accuracy_table(model, tokenizer, data, max_length, batch_size=8):
    """{split: accuracy} over every example of each split."""
    pad_id = pad_id_for(tokenizer)
    return {name: evaluate_classifier(model, encode_examples(getattr(data, name), tokenizer, max_length),
                                      pad_id, batch_size)[0] for name in ("train", "val", "test")}


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


# ---- base models -------------------------------------------------------------------------
def load_base(out_dir=None, gpt2_dir=None, dtype="float32"):
    """(model, tokenizer, train_state) from a run folder / checkpoint file, or GPT-2's weights."""
    if gpt2_dir:
        from scratchgpt.gpt2 import load_gpt2
        from scratchgpt.tokenizer import BPETokenizer
        return load_gpt2(gpt2_dir, dtype=dtype), BPETokenizer.gpt2(), None
    path = out_dir if out_dir.endswith(".npz") else os.path.join(out_dir, "ckpt_latest.npz")
    ck = checkpoint.load(path, dtype=dtype)
    if ck.tokenizer is None:
        raise ValueError(f"{path} holds no tokenizer, so text cannot be encoded for it")
    return ck.model, ck.tokenizer, ck.train_state


def pretrain_base(out_dir, datasets=("shakespeare", "wikipedia", "math"), vocab_size=2000, max_iters=200,
                  n_layers=4, n_heads=4, emb_dim=96, context_length=128, batch_size=8, lr=2e-3,
                  chars_per_corpus=600_000, seed=1337, log=print):
    """A small BPE GPT pretrained briefly with `scratchgpt train` on the start of each corpus
    (reused when out_dir already holds one of at least max_iters). Returns (model, tokenizer)."""
    from scratchgpt.train import TrainConfig, train
    latest = os.path.join(out_dir, "ckpt_latest.npz")
    if os.path.exists(latest):
        ck = checkpoint.load(latest)
        if (ck.train_state or {}).get("iter", 0) >= max_iters and ck.model.cfg.context_length >= context_length:
            log(f"reusing the pretrained base in {out_dir} (iteration {ck.train_state['iter']})")
            return ck.model, ck.tokenizer
    os.makedirs(out_dir, exist_ok=True)
    text_file = os.path.join(out_dir, "pretrain.txt")
    from scratchgpt.corpora import load_text
    parts = [load_text(name)[:chars_per_corpus] for name in datasets]
    with open(text_file, "w", encoding="utf-8") as f:
        f.write("\n\n".join(parts))
    cfg = TrainConfig(text_file=text_file, tokenizer=f"bpe:{vocab_size}", n_layers=n_layers, n_heads=n_heads,
                      emb_dim=emb_dim, context_length=context_length, batch_size=batch_size,
                      max_iters=max_iters, lr=lr, min_lr=lr / 10, warmup_iters=min(50, max_iters // 10),
                      eval_interval=max_iters, eval_iters=5, sample_tokens=40, seed=seed, out_dir=out_dir)
    log(f"pretraining a small BPE base model on {', '.join(datasets)} ({max_iters} iterations) in {out_dir}")
    res = train(cfg, progress=False, log=lambda *a: None)
    log(f"base model: val loss {res['val_loss']:.3f} after {res['iter']} iterations")
    return res["model"], res["tokenizer"]


# ---- saving ------------------------------------------------------------------------------
def save_finetuned(save_dir, model, tokenizer, train_state):
    """ckpt_latest.npz (LoRA merged, so sample / chat / eval read it as any run) and, for a
    LoRA run, lora_adapters.npz (the adapters alone). Returns the paths written."""
    from scratchgpt.lora import merge_lora, save_adapters
    os.makedirs(save_dir, exist_ok=True)
    paths = []
    if model.cfg.lora_rank:
        paths.append(os.path.join(save_dir, "lora_adapters.npz"))
        save_adapters(model, paths[-1])
        train_state = dict(train_state, lora={"rank": model.cfg.lora_rank, "alpha": model.cfg.lora_alpha,
                                              "targets": list(model.cfg.lora_targets), "merged": True})
    paths.insert(0, os.path.join(save_dir, "ckpt_latest.npz"))
    checkpoint.save(paths[0], merge_lora(model), tokenizer, train_state=train_state)
    return paths


def _prepare_trainable(model, trainable, lora_rank, lora_alpha, lora_targets, seed, log):
    """Freeze as asked, or add LoRA adapters (then only they and a classification head train)."""
    from scratchgpt.lora import add_lora, lora_parameter_count
    if lora_rank:
        head = ["score"] if model.cfg.num_classes else []
        model = add_lora(model, lora_rank, lora_alpha, lora_targets, seed=seed, trainable=head)
        n_lora = lora_parameter_count(model.cfg, lora_rank, lora_targets)
        log(f"LoRA rank {lora_rank}, alpha {model.cfg.lora_alpha:g} on {', '.join(model.cfg.lora_targets)}: "
            f"{n_lora:,} adapter parameters")
    else:
        model.set_trainable(trainable_prefixes(model.cfg, trainable))
    n, total = model.num_trainable_parameters(), model.num_parameters()
    log(f"trainable parameters: {n:,} of {total:,} ({n / total:.2%})")
    return model


# ---- the commands ------------------------------------------------------------------------
def _add_common(p, default_trainable):
    src = p.add_mutually_exclusive_group()
    src.add_argument("--out-dir", help="start from this run (a `scratchgpt train` folder or .npz)")
    src.add_argument("--gpt2-dir", help="start from GPT-2's weights (a Hugging Face folder)")
    p.add_argument("--save-dir", required=True, help="where the fine-tuned model is written")
    p.add_argument("--epochs", type=int, default=None,
                   help="default: the book's (5 for finetune-cls, 2 for finetune-sft)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=None,
                   help="AdamW learning rate (default: 5e-5 for GPT-2, the book's, 5e-4 with LoRA; "
                        "1e-3 for the small models scratchgpt trains, 3e-3 with LoRA)")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=None)
    p.add_argument("--trainable", default=default_trainable,
                   help=f"what trains without LoRA: all, head, last-block or last-N (default {default_trainable})")
    p.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank instead (appendix E)")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: the rank, a scale of 1)")
    p.add_argument("--lora-targets", default="all", help="c_attn, c_proj, c_fc, attn, mlp or all (comma-separated)")
    p.add_argument("--eval-freq", type=int, default=None)
    p.add_argument("--eval-iter", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base-dir", default=BASE_DIR,
                   help="without --out-dir/--gpt2-dir: where a small base model is pretrained (and reused)")
    p.add_argument("--base-iters", type=int, default=200, help="pretraining iterations of that base model")


def _default_lr(a, big):
    """The book's 5e-5 for GPT-2. LoRA here scales by alpha / r (1 at the default alpha = r)
    where the book's printed code scales by alpha (16): Adam then needs a ~10x larger rate."""
    if a.lr is not None:
        return a.lr
    return (5e-4 if a.lora_rank else 5e-5) if big else (3e-3 if a.lora_rank else 1e-3)


def cmd_finetune_cls(a, log=print):
    if a.out_dir or a.gpt2_dir:
        model, tok, _ = load_base(a.out_dir, a.gpt2_dir)
    else:
        model, tok = pretrain_base(a.base_dir, max_iters=a.base_iters, log=log)
    data = load_csv_dataset(a.csv, seed=a.seed) if a.csv else corpus_passages_dataset(a.per_class, seed=a.seed)
    log(f"data: {data.summary()}")
    model = add_classification_head(model, len(data.labels), seed=a.seed)
    model = _prepare_trainable(model, a.trainable, a.lora_rank, a.lora_alpha, a.lora_targets, a.seed, log)
    max_length = classification_max_length(model, tok, data, a.max_length)
    before = accuracy_table(model, tok, data, max_length, a.batch_size)
    log("accuracy before fine-tuning: " + ", ".join(f"{k} {v:.1%}" for k, v in before.items()))
    hist = train_classifier(model, tok, data, epochs=a.epochs or 5, batch_size=a.batch_size,
                            lr=_default_lr(a, a.gpt2_dir), weight_decay=a.weight_decay,
                            eval_freq=a.eval_freq or 50, eval_iter=a.eval_iter, max_length=max_length,
                            seed=a.seed, grad_clip=a.grad_clip, log=log)
    after = accuracy_table(model, tok, data, max_length, a.batch_size)
    log("accuracy after fine-tuning:  " + ", ".join(f"{k} {v:.1%}" for k, v in after.items()))
    state = {"task": "classification", "labels": data.labels, "max_length": max_length,
             "pad_id": pad_id_for(tok), "accuracy_before": before, "accuracy_after": after,
             "train_losses": hist["train_losses"], "val_losses": hist["val_losses"]}
    for p in save_finetuned(a.save_dir, model, tok, state):
        log(f"wrote {p}")
    return 0


def cmd_finetune_sft(a, log=print):
    if a.out_dir or a.gpt2_dir:
        model, tok, _ = load_base(a.out_dir, a.gpt2_dir)
    else:
        model, tok = pretrain_base(a.base_dir, max_iters=a.base_iters, log=log)
    require_eot(tok)
    if a.json:
        train, val, test = split_instructions(load_instruction_json(a.json))
    else:
        train, val, test = split_instructions(wikipedia_instructions(a.n_articles, seed=a.seed))
    log(f"data: {len(train)} train / {len(val)} val / {len(test)} test instructions")
    model = _prepare_trainable(model, a.trainable, a.lora_rank, a.lora_alpha, a.lora_targets, a.seed, log)
    test_set = [encode_instruction(e, tok) for e in test]
    before = response_loss(model, test_set, tok.eot_id, a.batch_size)
    shown = test[:a.show]
    before_text = [generate_response(model, tok, e, a.max_new_tokens) for e in shown]
    log(f"held-out response loss before fine-tuning: {before:.3f}")
    hist = train_instructions(model, tok, train, val, epochs=a.epochs or 2, batch_size=a.batch_size,
                              lr=_default_lr(a, a.gpt2_dir), weight_decay=a.weight_decay,
                              eval_freq=a.eval_freq or 5, eval_iter=a.eval_iter, seed=a.seed,
                              grad_clip=a.grad_clip, max_steps=a.max_steps, log=log)
    after = response_loss(model, test_set, tok.eot_id, a.batch_size)
    log(f"held-out response loss after fine-tuning:  {after:.3f} (before {before:.3f})")
    from scratchgpt.lora import merge_lora
    plain = merge_lora(model)                      # LoRA folded in once, for generation
    responses = []
    for e, b in zip(shown, before_text):
        r = generate_response(plain, tok, e, a.max_new_tokens)
        responses.append(dict(e, model_response=r))
        log(f"\n{format_input(e)}\n\ncorrect response: {e['output']}\nbefore: {b}\nafter:  {r}")
    state = {"task": "instruction", "instruction_tuned": True, "prompt_format": "alpaca",
             "response_loss_before": before, "response_loss_after": after,
             "train_losses": hist["train_losses"], "val_losses": hist["val_losses"]}
    paths = save_finetuned(a.save_dir, model, tok, state)
    with open(os.path.join(a.save_dir, "responses.json"), "w", encoding="utf-8") as f:
        json.dump(responses, f, indent=1, ensure_ascii=False)
    for p in paths + [os.path.join(a.save_dir, "responses.json")]:
        log(f"wrote {p}")
    log(f"chat with it: scratchgpt chat --out-dir {a.save_dir}")
    return 0


def register_cli(sub):
    """Add `finetune-cls` and `finetune-sft` to the `scratchgpt` command's subparsers."""
    c = sub.add_parser("finetune-cls", help="chapter 6: fine-tune a classifier on the last token's hidden state")
    _add_common(c, "last-block")
    c.add_argument("--csv", help="a CSV/TSV of text,label (e.g. the book's SMS spam file); default: "
                                 "passages of our three corpora labelled by corpus")
    c.add_argument("--per-class", type=int, default=300, help="passages per corpus for the default data")
    c.add_argument("--max-length", type=int, default=None, help="truncate texts to this many tokens")
    c.set_defaults(func=cmd_finetune_cls)
    s = sub.add_parser("finetune-sft", help="chapter 7: instruction fine-tuning (Alpaca prompt format)")
    _add_common(s, "all")
    s.add_argument("--json", help="a JSON list of {instruction, input, output} (e.g. the book's "
                                  "instruction-data.json); default: instructions about Wikipedia articles")
    s.add_argument("--n-articles", type=int, default=600, help="articles for the default data")
    s.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    s.add_argument("--show", type=int, default=3, help="held-out responses to print before/after")
    s.add_argument("--max-new-tokens", type=int, default=48)
    s.set_defaults(func=cmd_finetune_sft)


def main(argv=None):
    """`python -m scratchgpt.finetune finetune-cls|finetune-sft ...` (the same as `scratchgpt ...`)."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m scratchgpt.finetune")
    register_cli(p.add_subparsers(dest="command", required=True))
    from scratchgpt.cli import run
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
