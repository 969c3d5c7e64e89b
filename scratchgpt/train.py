"""The training loop: batches -> loss -> backward -> clip -> AdamW, with evaluation,
logging, samples and checkpoints that never lose work.

Every `eval_interval` iterations (and at the end) it writes into `out_dir`:
  metrics.jsonl                   one JSON line: iter, train_loss, val_loss, lr, elapsed_s, tokens_per_s, ...
  samples.txt                     a sample from a fixed prompt and seed, so samples are comparable
  checkpoints/iter_NNNNNN.npz     the model at that iteration (weights, config, tokenizer)
  ckpt_latest.npz                 everything needed to resume (adds AdamW moments, RNG and sampler state)

`--resume` continues from ckpt_latest.npz bit-exactly: the batches, dropout masks and
learning rates are the ones an uninterrupted run would have used. Ctrl-C saves
ckpt_latest.npz before leaving, so an interrupted run resumes where it stopped.

Under `mpiexec -n N` the same loop trains data-parallel (scratchgpt/distributed.py): each
process computes its rows of every batch, one all-reduce per step sums the gradients, and
rank 0 alone writes the run folder.
"""
import dataclasses
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy

from scratchgpt import backend, checkpoint, distributed, precision
from scratchgpt.data import BatchSampler, get_batch, prepare_corpus
from scratchgpt.generate import generate_text
from scratchgpt.llama import Llama3Config, Llama3Model, Qwen3Config, Qwen3Model
from scratchgpt.model import GPTConfig, GPTModel
from scratchgpt.optim import AdamW, clip_grad_norm
from scratchgpt.rng import DropoutRNG
from scratchgpt.schedules import get_lr

LATEST = "ckpt_latest.npz"


@dataclass
class TrainConfig:
    # data
    dataset: str = "shakespeare"
    text_file: str = None
    tokenizer: str = "char"                  # char | gpt2 | bpe:N
    # model (nanoGPT's CPU recipe for character-level Shakespeare)
    arch: str = "gpt2"                       # gpt2 | llama3 | qwen3 (scratchgpt/llama.py)
    n_layers: int = 4
    n_heads: int = 4
    emb_dim: int = 128
    context_length: int = 64
    drop_rate: float = 0.0
    hidden_dim: int = 0                      # llama3 / qwen3: the SwiGLU width; 0 = 4 * emb_dim
    n_kv_groups: int = 0                     # llama3 / qwen3: key/value heads; 0 = n_heads (no grouping)
    # optimisation
    batch_size: int = 12
    max_iters: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    lr_schedule: str = "cosine"              # constant | multistep | cosine
    warmup_iters: int = 100
    milestones: list = field(default_factory=list)
    gamma: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1
    zero1: bool = False                      # under mpiexec: shard AdamW's moments over the ranks
    # evaluation, samples, bookkeeping
    eval_interval: int = 250
    eval_iters: int = 20
    sample_prompt: str = "\n"
    sample_tokens: int = 200
    seed: int = 1337
    out_dir: str = "out/shakespeare-char"
    init_from: str = None
    backend: str = field(default_factory=lambda: backend.name)     # the active one (SCRATCHGPT_BACKEND)
    dtype: str = "float32"
    precision: str = "fp32"                  # fp32 | tf32 | bf16 (GPU matrix products, scratchgpt/precision.py)
    cuda_graph: bool = None                  # GPU: replay each micro-batch's step as a CUDA graph (cuda_graph.py);
                                             # None: wherever it can (--backend cupy, one process, GPT-2)

    def __post_init__(self):
        for name in ("max_iters", "batch_size", "eval_interval", "eval_iters", "grad_accum"):
            if getattr(self, name) < (0 if name == "max_iters" else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr_schedule not in ("constant", "multistep", "cosine"):
            raise ValueError(f"unknown lr schedule {self.lr_schedule!r}: use constant, multistep or cosine")
        if self.arch not in ("gpt2", "llama3", "qwen3"):
            raise ValueError(f"unknown arch {self.arch!r}: use gpt2, llama3 or qwen3")
        if self.arch != "gpt2" and self.drop_rate:
            raise ValueError(f"--drop-rate {self.drop_rate}: {self.arch} has no dropout (as the book's and "
                             "Hugging Face's models); leave it at 0")

    def model_config(self, vocab_size):
        if self.arch == "gpt2":
            return GPTConfig(vocab_size=vocab_size, context_length=self.context_length, emb_dim=self.emb_dim,
                             n_heads=self.n_heads, n_layers=self.n_layers, drop_rate=self.drop_rate)
        # a small model trained from scratch: head_dim = emb_dim / n_heads, and no RoPE scaling
        # (Llama 3's stretches a 8192-token pretraining context; ours is the run's context_length)
        config_class = Qwen3Config if self.arch == "qwen3" else Llama3Config
        return config_class(vocab_size=vocab_size, context_length=self.context_length, emb_dim=self.emb_dim,
                            n_heads=self.n_heads, n_layers=self.n_layers,
                            hidden_dim=self.hidden_dim or 4 * self.emb_dim, head_dim=0,
                            n_kv_groups=self.n_kv_groups or self.n_heads, rope_scaling=None)

    def make_model(self, vocab_size):
        cls = {"gpt2": GPTModel, "llama3": Llama3Model, "qwen3": Qwen3Model}[self.arch]
        return cls(self.model_config(vocab_size), seed=self.seed, dtype=self.dtype)

    def lr_at(self, it):
        return get_lr(self.lr_schedule, it, self.lr, max_iters=self.max_iters, warmup_iters=self.warmup_iters,
                      min_lr=self.min_lr, milestones=self.milestones, gamma=self.gamma)


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C (or `stop_after`) once the latest checkpoint is safely on disk."""


def make_tokenizer(spec, text):
    """'char' -> built from the text; 'gpt2' -> GPT-2's BPE; 'bpe:N' -> a BPE of N tokens trained on text."""
    from scratchgpt.tokenizer import BPETokenizer, CharTokenizer
    if spec == "char":
        return CharTokenizer.from_text(text)
    if spec == "gpt2":
        return BPETokenizer.gpt2()
    if spec.startswith("bpe:"):
        try:
            n = int(spec[4:])
        except ValueError:
            raise ValueError(f"--tokenizer {spec!r}: expected bpe:N with N an integer, e.g. bpe:2000") from None
        return BPETokenizer.train(text, n)
    raise ValueError(f"unknown tokenizer {spec!r}: use char, gpt2 or bpe:N")


def load_corpus(cfg, tokenizer=None):
    """The prepared (cached, split, encoded) corpus the config names."""
    if tokenizer is None and cfg.tokenizer == "gpt2":
        tokenizer = make_tokenizer("gpt2", "")
    if tokenizer is None and cfg.tokenizer != "char":          # bpe:N, trained on the train split
        from scratchgpt.corpora import load_text
        text = (open(cfg.text_file, encoding="utf-8").read() if cfg.text_file
                else load_text(cfg.dataset))
        tokenizer = make_tokenizer(cfg.tokenizer, text[: int(0.9 * len(text))])
    return prepare_corpus(None if cfg.text_file else cfg.dataset, text_file=cfg.text_file, tokenizer=tokenizer)


def estimate_loss(model, corpus, cfg, it, world=None):
    """Mean loss over eval_iters batches of each split, drawn from a generator seeded by
    (seed, it): every evaluation is reproducible and leaves the training batches untouched.
    With several processes each one scores its rows of every batch, and the sum is the mean."""
    world = world or distributed.world()
    model.eval()
    means = []
    with backend.inference():                           # no backward follows: keep no caches
        for k, split in enumerate(("train", "val")):
            data = getattr(corpus, split)
            rng = numpy.random.default_rng([cfg.seed, it, k])
            losses = [_my_loss(model, world, *get_batch(data, cfg.batch_size, cfg.context_length, rng))
                      for _ in range(cfg.eval_iters)]
            means.append(float(numpy.mean(losses)))
    model.train()
    train_loss, val_loss = world.sum_floats(*means)
    return {"train": train_loss, "val": val_loss}


def _my_loss(model, world, x, y):
    """This rank's part of the batch's mean loss: its rows' mean, times its share of the targets
    (the whole loss in a single process)."""
    share = world.share(y)
    return share * model.loss(world.rows(x), world.rows(y)) if share else 0.0


def _truncate_logs(out_dir, start_iter):
    """On resume, forget log lines from iterations at or after the resume point: they are redone."""
    path = os.path.join(out_dir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            lines = [l for l in f if l.strip() and json.loads(l)["iter"] < start_iter]
        with open(path, "w") as f:
            f.writelines(lines)
    path = os.path.join(out_dir, "samples.txt")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            blocks = f.read().split("=== iter ")
        keep = [b for b in blocks[1:] if int(b.split(" ", 1)[0]) < start_iter]
        with open(path, "w", encoding="utf-8") as f:
            f.write(blocks[0] + "".join("=== iter " + b for b in keep))


def _sample_prompt(cfg, tokenizer, corpus):
    try:
        tokenizer.encode(cfg.sample_prompt)
        return cfg.sample_prompt
    except ValueError:                      # not in this vocabulary: the first val character(s)
        return tokenizer.decode([int(corpus.val[0])])


def train(cfg, resume=False, progress=True, log=print, stop_after=None, tokenizer=None):
    """Run (or resume) training as `cfg` says; returns a summary dict.

    tokenizer: use this tokenizer instead of building one from the corpus (e.g. a character
    vocabulary shared by several corpora, so every model can score every corpus).
    stop_after: stop as an interruption would after that many iterations (tests use it).
    """
    world = distributed.world()            # one process, or this rank of an mpiexec job
    world.check_batch_size(cfg.batch_size)
    if cfg.backend == "cupy":
        world.use_gpu()                    # GPU local_rank, before CuPy touches a device
    backend.use(cfg.backend)
    precision.use(cfg.precision, cfg.backend)
    main = world.rank == 0                 # rank 0 alone writes the run folder and logs
    if not main:
        log, progress = _quiet, False
    if main:
        os.makedirs(os.path.join(cfg.out_dir, "checkpoints"), exist_ok=True)
    latest = os.path.join(cfg.out_dir, LATEST)
    start_iter = 0
    if resume:
        ck = checkpoint.load(latest)
        state = ck.train_state
        saved = TrainConfig(**{**state["train_config"], "max_iters": cfg.max_iters,
                               "out_dir": cfg.out_dir, "backend": cfg.backend,
                               "precision": cfg.precision, "cuda_graph": cfg.cuda_graph})
        cfg = saved
        model, tokenizer = ck.model, ck.tokenizer
        corpus = world.rank0_first(lambda: load_corpus(cfg, tokenizer))
        opt = _make_optimizer(model, cfg, world)
        opt.load_state_dict(ck.optimizer_state)
        try:
            model.rng.load_state_dict(state["dropout_rng"])
        except ValueError:           # an older checkpoint: only matters if dropout is on
            if cfg.drop_rate > 0:
                raise ValueError(f"{latest} stores the old dropout generator, so its dropout masks "
                                 "cannot be continued bit-exactly: start the run again") from None
        sampler = BatchSampler(corpus.train, cfg.batch_size, cfg.context_length, cfg.seed)
        sampler.load_state_dict(state["sampler"])
        start_iter = state["iter"]
        elapsed0 = state["elapsed_s"]
        if main:
            _truncate_logs(cfg.out_dir, start_iter)
        log(f"resuming {cfg.out_dir} at iteration {start_iter}")
    else:
        if main:
            _clear_old_run(cfg, latest, log)
        if cfg.init_from:
            src = checkpoint.load(os.path.join(cfg.init_from, LATEST), dtype=cfg.dtype)
            model, tokenizer = src.model, src.tokenizer
            # the architecture comes from the source run
            cfg = dataclasses.replace(cfg, arch=getattr(model, "arch", "gpt2"), **{k: getattr(model.cfg, k) for k in
                                              ("n_layers", "n_heads", "emb_dim", "context_length")})
            if cfg.arch == "gpt2":  # this run's drop rate: the layers read it when built, so build again
                model = checkpoint.build_model(dataclasses.replace(model.cfg, drop_rate=cfg.drop_rate),
                                               src.model.extensions, dtype=cfg.dtype)
                model.load_state_dict(src.model.state_dict())
            model.rng = DropoutRNG(cfg.seed + 1)
            corpus = world.rank0_first(lambda: load_corpus(cfg, tokenizer))
            log(f"initialised from {cfg.init_from} (iteration {src.train_state['iter'] if src.train_state else '?'})")
        else:
            corpus = world.rank0_first(lambda: load_corpus(cfg, tokenizer))
            tokenizer = corpus.tokenizer
            model = cfg.make_model(tokenizer.vocab_size)
        opt = _make_optimizer(model, cfg, world)
        sampler = BatchSampler(corpus.train, cfg.batch_size, cfg.context_length, cfg.seed)
        elapsed0 = 0.0
    if world.size > 1:                     # each rank draws its rows of one process's dropout masks
        model.rng = distributed.RowsDropoutRNG(model.rng, world)
    graph = None
    if cfg.cuda_graph or (cfg.cuda_graph is None and cfg.backend == "cupy"):   # each micro-batch's step as one graph
        from scratchgpt import cuda_graph
        why = cuda_graph.usable(model, world.size)
        if why and cfg.cuda_graph:                              # asked for, and it cannot be
            raise ValueError(f"--cuda-graph: {why}")
        graph = None if why else cuda_graph.GraphStep(model)
    log(f"model: {model.num_parameters():,} parameters; data: {len(corpus.train):,} train / "
        f"{len(corpus.val):,} val tokens, vocabulary {tokenizer.vocab_size}")
    prompt = _sample_prompt(cfg, tokenizer, corpus)

    def train_state(it, elapsed):
        # every rank calls this (ZeRO-1 gathers the optimizer's slices to rank 0 here)
        if isinstance(opt, distributed.ZeroAdamW):
            opt.gather_state()                 # the AdamW slices, to rank 0 for the checkpoint
        return {"iter": it, "elapsed_s": elapsed, "sampler": sampler.state_dict(),
                "dropout_rng": model.rng.state_dict(), "train_config": dataclasses.asdict(cfg),
                "world_size": world.size}

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.max_iters, initial=start_iter, unit="it", dynamic_ncols=True, disable=None)
    t0 = time.perf_counter() - elapsed0
    tokens_per_iter = cfg.batch_size * cfg.context_length * cfg.grad_accum
    tok_rate, last_norm = 0.0, None
    it = start_iter
    stop = _StopFlag(announce=main)
    stopping = False                   # Ctrl-C as agreed by all ranks (stop.requested is this rank's)
    try:
        while True:
            lr = cfg.lr_at(it)
            if it % cfg.eval_interval == 0 or it == cfg.max_iters:
                losses = estimate_loss(model, corpus, cfg, it, world)
                elapsed = time.perf_counter() - t0
                state = train_state(it, elapsed)            # every rank takes part
                if main:
                    text = generate_text(model, tokenizer, prompt, cfg.sample_tokens, temperature=0.8,
                                         top_k=None, seed=cfg.seed)[0]
                    row = {"iter": it, "train_loss": losses["train"], "val_loss": losses["val"], "lr": lr,
                           "elapsed_s": round(elapsed, 3), "tokens_per_s": round(tok_rate, 1),
                           "tokens_seen": it * tokens_per_iter,
                           "grad_norm": None if last_norm is None else round(float(last_norm), 6),
                           "world_size": world.size}
                    with open(os.path.join(cfg.out_dir, "metrics.jsonl"), "a") as f:
                        f.write(json.dumps(row) + "\n")
                    with open(os.path.join(cfg.out_dir, "samples.txt"), "a", encoding="utf-8") as f:
                        f.write(f"=== iter {it} (val loss {losses['val']:.4f}) ===\n{text}\n\n")
                    checkpoint.save(os.path.join(cfg.out_dir, "checkpoints", f"iter_{it:06d}.npz"), model,
                                    tokenizer, train_state={"iter": it, "val_loss": losses["val"]})
                    checkpoint.save(latest, model, tokenizer, opt, state)
                    msg = f"iter {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, lr {lr:.2e}"
                    (bar.write if bar is not None and not bar.disable else log)(msg + "\n" + text.strip()[:300] + "\n")
            if it >= cfg.max_iters:
                break
            if stopping or (stop_after is not None and it >= stop_after):
                raise _CleanStop
            ts = time.perf_counter()
            loss = _step(model, opt, sampler, cfg, lr, world, graph)
            # one small all-reduce: every rank sees the same loss and the same stop decision
            loss, stops = world.sum_floats(loss, stop.requested)
            stopping = stops > 0
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"the training loss became {loss} at iteration {it} (lr {lr:.2e}); nothing was saved "
                    f"over {latest}. Try a lower --lr or --grad-clip.")
            last_norm = opt.last_grad_norm
            tok_rate = tokens_per_iter / (time.perf_counter() - ts)
            it += 1
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_rate:,.0f}", refresh=False)
                bar.update(1)
    except _CleanStop:
        state = train_state(it, time.perf_counter() - t0)
        if main:
            checkpoint.save(latest, model, tokenizer, opt, state)
        if bar is not None:
            bar.close()
        launcher = f"mpiexec -n {world.size} " if world.size > 1 else ""
        log(f"interrupted at iteration {it}; saved {latest}. Continue with: {launcher}scratchgpt train "
            f"--out-dir {cfg.out_dir} --resume")
        raise TrainingInterrupted(it) from None
    finally:
        stop.restore()
    if bar is not None:
        bar.close()
    return {"iter": it, "out_dir": cfg.out_dir, "train_loss": losses["train"], "val_loss": losses["val"],
            "model": model, "tokenizer": tokenizer}


class _CleanStop(Exception):
    pass


def _quiet(*args, **kwargs):
    pass


def _clear_old_run(cfg, latest, log):
    """A fresh run in a used folder: remove the old run's logs and kept checkpoints."""
    if os.path.exists(latest) and cfg.init_from is None:
        log(f"note: {cfg.out_dir} already holds a run; starting over (use --resume to continue it)")
    for name in ("metrics.jsonl", "samples.txt"):
        if os.path.exists(os.path.join(cfg.out_dir, name)):
            os.remove(os.path.join(cfg.out_dir, name))
    for name in os.listdir(os.path.join(cfg.out_dir, "checkpoints")):
        if name.startswith("iter_") and name.endswith(".npz"):
            os.remove(os.path.join(cfg.out_dir, "checkpoints", name))


class _StopFlag:
    """The first Ctrl-C asks the loop to stop after the current step (so the parameters are
    never saved half-updated); a second one interrupts at once."""

    def __init__(self, announce=True):
        self.requested = False
        self.announce = announce
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt          # leaves ckpt_latest.npz as it was
        self.requested = True
        if self.announce:
            print("\nstopping after this step and saving a checkpoint (Ctrl-C again to quit at once)")

    def restore(self):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _make_optimizer(model, cfg, world=None):
    kw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    world = world or distributed.world()
    if cfg.zero1 and world.size > 1:
        return distributed.ZeroAdamW(model, world, **kw)
    return AdamW(model, **kw)


def _step(model, opt, sampler, cfg, lr, world=None, graph=None):
    """One optimisation step: grad_accum micro-batches, averaged; clip; AdamW. Returns the mean loss
    (with several processes, this rank's part of it: the sum over the ranks is the mean loss).

    Data parallel: each rank runs its rows of every micro-batch, weighted by its share of the
    micro-batch's targets (world.share); one all-reduce then sums the weighted gradients into
    the gradient of the whole batch's mean loss, the one a single process computes.
    """
    world = world or distributed.world()
    model.zero_grad()
    total, last_share = 0.0, None
    for _ in range(cfg.grad_accum):
        x, y = sampler.next()                          # the global batch, the same on every rank
        share = world.share(y)
        if share == 0:                                 # all my targets ignored: nothing to add
            continue
        if last_share is not None and share != last_share:
            model.flat_grads *= last_share / share     # keeps flat_grads = sum_k (share_k / share) g_k
        if graph is not None:                          # the same work, replayed as a CUDA graph
            total += share * graph(x, y)
        else:
            total += share * model.loss(world.rows(x), world.rows(y))
            model.backward()
        last_share = share
    if last_share is not None and (cfg.grad_accum > 1 or last_share != 1.0):
        model.flat_grads *= last_share / cfg.grad_accum
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    opt.lr = lr
    if isinstance(opt, distributed.ZeroAdamW):         # reduce-scatter, clip, AdamW, all-gather
        opt.last_grad_norm = opt.step(max_norm)
        return total / cfg.grad_accum
    world.sum_(model.flat_grads)                       # the all-reduce (a no-op in one process)
    opt.last_grad_norm = clip_grad_norm(model, max_norm)
    opt.step()
    return total / cfg.grad_accum
