"""What every analysis needs: reading a run folder, and writing figures and tables. (Training
with a given vocabulary is scratchgpt.train.train(cfg, tokenizer=...).)

A run folder (made by `scratchgpt train`) holds metrics.jsonl, samples.txt,
checkpoints/iter_NNNNNN.npz and ckpt_latest.npz; the training config is stored inside
ckpt_latest.npz (train_state["train_config"]), so every analysis can rebuild the exact
corpus and evaluation the run used.

Figures are drawn on `matplotlib.figure.Figure` objects directly (no pyplot), so nothing
depends on, or changes, the global matplotlib backend.
"""
import csv
import json
import math
import os
import re
import warnings

import numpy

from scratchgpt import backend, checkpoint
from scratchgpt.train import LATEST, TrainConfig, load_corpus

WORD_RE = re.compile(r"[^\W\d_]+")        # a run of letters (any script), as a "word"


# ---- run folders -------------------------------------------------------------------------
def list_checkpoints(run_dir):
    """[(iteration, path)] of the run's kept checkpoints, in training order."""
    folder = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{run_dir} has no checkpoints/ folder: is it a run made by `scratchgpt train`?")
    out = []
    for name in os.listdir(folder):
        m = re.fullmatch(r"iter_(\d+)\.npz", name)
        if m:
            out.append((int(m.group(1)), os.path.join(folder, name)))
    if not out:
        raise FileNotFoundError(f"{folder} holds no iter_NNNNNN.npz checkpoints")
    return sorted(out)


def run_config(run_dir):
    """The TrainConfig the run was trained with (as stored in its ckpt_latest.npz)."""
    meta, _ = checkpoint.read(os.path.join(run_dir, LATEST))
    state = meta.get("train_state") or {}
    if "train_config" not in state:
        raise ValueError(f"{run_dir}/{LATEST} holds no training config (train_state['train_config'])")
    return TrainConfig(**state["train_config"])


def load_model(path):
    """(model, tokenizer, iteration) of one checkpoint file, in eval mode."""
    ck = checkpoint.load(path)
    it = (ck.train_state or {}).get("iter")
    return ck.model.eval(), ck.tokenizer, it


def final_checkpoint(run_dir):
    return list_checkpoints(run_dir)[-1][1]


def run_corpus(run_dir, tokenizer=None, cfg=None):
    """The prepared corpus of a run, encoded with `tokenizer` (default: the run's own)."""
    cfg = cfg or run_config(run_dir)
    if tokenizer is None:
        tokenizer = load_model(final_checkpoint(run_dir))[1]
    return load_corpus(cfg, tokenizer)


def load_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def decode_ids(tokenizer, ids):
    """Token ids -> text; a character tokenizer decodes millions of ids with one lookup."""
    ids = numpy.asarray(ids)
    if hasattr(tokenizer, "chars"):
        return "".join(numpy.asarray(tokenizer.chars, dtype=object)[ids].tolist())
    return tokenizer.decode(ids.tolist())


def corpus_words(text):
    """The set of (lower-cased) words of a text: what "a valid word" means here."""
    return set(WORD_RE.findall(text.lower()))


def words_of(text):
    return WORD_RE.findall(text.lower())


def valid_word_share(text, vocabulary):
    """Share of the words of `text` that occur in `vocabulary` (NaN when there are none)."""
    w = words_of(text)
    return sum(x in vocabulary for x in w) / len(w) if w else float("nan")


# ---- training logs -----------------------------------------------------------------------
def brief_log(prefix=""):
    """A `log` for train() that prints the first line of each message (no sample text)."""
    def log(msg):
        first = str(msg).strip().splitlines()
        if first:
            print(prefix + first[0], flush=True)
    return log


# ---- numbers -----------------------------------------------------------------------------
def softmax(logits):
    z = numpy.asarray(logits, dtype=numpy.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = numpy.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def entropy(p, base=math.e):
    """Shannon entropy of a probability vector (nats by default)."""
    p = numpy.asarray(p, dtype=numpy.float64)
    nz = p[p > 0]
    return float(-(nz * numpy.log(nz)).sum() / math.log(base))


def show_char(c):
    """A character as a table or axis label: whitespace made visible."""
    return {" ": "␣", "\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(c, c)


def fmt(x, digits=3):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


# ---- files -------------------------------------------------------------------------------
def write_csv(path, rows, columns=None):
    """rows: list of dicts; columns: their order (default: the first row's keys)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    columns = columns or (list(rows[0]) if rows else [])
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _plain(v) for k, v in r.items()})
    return path


def write_json(path, obj):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_jsonable(obj), f, indent=1, ensure_ascii=False)
    return path


def _plain(v):
    if isinstance(v, (numpy.floating, numpy.integer)):
        return v.item()
    return v


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, numpy.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, (numpy.floating, float)):
        v = float(o)
        return v if math.isfinite(v) else None
    if isinstance(o, numpy.integer):
        return int(o)
    return o


def new_figure(width, height):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=100)


def tight_layout(fig):
    """fig.tight_layout(), leaving room for the suptitle when there is one."""
    top = 1.0 - 0.5 / fig.get_figheight() if fig._suptitle is not None else 1.0
    fig.tight_layout(rect=(0, 0, 1, top))


def save_figure(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")           # "Glyph ... missing from font" for rare characters
        fig.savefig(path, bbox_inches="tight")
    return path


def md_table(header, rows):
    """A Markdown table from a header list and rows of cells."""
    def cell(x):
        return str(x).replace("\n", "\\n").replace("|", "\\|")
    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


class blas_threads:
    """`with blas_threads(1):` runs NumPy's matrix products on one thread, when the BLAS is an
    OpenBLAS whose thread count can be set (otherwise it does nothing).

    The lab's tiny models multiply matrices of a few thousand entries, where OpenBLAS's threads
    cost more than they save, and on a busy machine their busy-waiting made a 2-layer model's
    step ten times slower than on one thread. n=None leaves the setting alone.
    """

    def __init__(self, n):
        self.n, self.lib, self.old = n, None, None

    def __enter__(self):
        if self.n is None:
            return self
        lib = backend.openblas_library()
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    self.lib, self.put, self.old = lib, put, get()
                    put(int(self.n))
                    return self
        return self

    def __exit__(self, *exc):
        if self.lib is not None:
            self.put(int(self.old))
        return False


def use_numpy_backend():
    """Analyses run on the host (they read checkpoints and plot), whatever the run used."""
    backend.use("numpy")
