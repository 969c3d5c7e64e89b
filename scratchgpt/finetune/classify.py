"""Chapter 6: fine-tuning for text classification (see scratchgpt.finetune's docstring)."""
import csv
import functools
import re
from dataclasses import dataclass

import numpy

from scratchgpt import backend
from scratchgpt.arrays import array_module
from scratchgpt.classifier import add_classification_head  # noqa: F401  (the chapter's head)
from scratchgpt.finetune.common import CHAR_PAD_ID, timed_step
from scratchgpt.optim import AdamW, TrainableParams

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
    loss, cache = backend.ops.cross_entropy_forward(last, xp.asarray(labels))
    if backward:
        dlogits = xp.zeros_like(logits)
        dlogits[xp.arange(len(lengths)), xp.asarray(lengths) - 1] = backend.ops.cross_entropy_backward(1.0, cache)
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
            loss = backend.ops.cross_entropy_forward(last, array_module(last).asarray(labels))[0]
            loss_sum += float(loss) * len(labels)        # float: on CuPy the loss is a 0-d device array
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


