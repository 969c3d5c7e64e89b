"""The lab: every analysis end to end, into one report.

    scratchgpt lab --out-dir out/lab --quick     # tiny models on 50k-character slices, a few minutes
    scratchgpt lab --out-dir out/lab             # small real models on the full corpora

It trains one model per corpus (Shakespeare, Wikipedia, math) with one character vocabulary
shared by all three (the union of their characters, so every model can read every corpus),
runs the eleven analyses on them, and writes

    <out-dir>/report.md        figures inline, numbers in tables, observations computed from the numbers
    <out-dir>/figures/         every figure, with its numbers as CSV and JSON
    <out-dir>/runs/<name>/     the training runs (ordinary `scratchgpt train` run folders)
    <out-dir>/data/            the corpus slices (quick mode) and the shared vocabulary
"""
import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field

from scratchgpt.analysis import (architecture, corpus, crossdomain, curves, finetune, gradcam, samples,
                                 schedules, softmax, variability, weights)
from scratchgpt.analysis.common import blas_threads, brief_log, final_checkpoint, load_model, use_numpy_backend
from scratchgpt.train import TrainConfig, train

DOMAINS = ("shakespeare", "wikipedia", "math")
SOFTMAX_PROMPTS = ("The integral of x^2 is", "In biology, mitochondria are", "Once upon a time")
SOFTMAX_FOCUS = {"The integral of x^2 is": "math", "In biology, mitochondria are": "wikipedia",
                 "Once upon a time": "shakespeare"}
SAMPLE_PROMPTS = {"shakespeare": "KING HENRY.", "wikipedia": "The city of", "math": "What is 12 + 7?"}
GRADCAM_PROMPTS = {"shakespeare": "KING HENRY. Now, lords, to Fr", "wikipedia": "In biology, mitochondria are",
                   "math": "What is 12 + 7? 12 + 7 = 1"}


@dataclass
class LabConfig:
    quick: bool
    corpus_chars: int = None              # slice each corpus to this many characters (None: all)
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    finetune_iters: int = 300
    finetune_interval: int = 50
    finetune_lr: float = 3e-4
    eval_batches: int = 20
    schedule_iters: int = 400
    schedule_interval: int = 50
    schedule_gamma: float = 0.7
    sample_tokens: int = 200
    n_seeds: int = 5
    softmax_show: int = 4
    toy_iters: int = 60

    @classmethod
    def preset(cls, quick):
        if quick:
            return cls(quick=True, corpus_chars=50_000,
                       model=dict(n_layers=2, n_heads=2, emb_dim=48, context_length=32),
                       train=dict(batch_size=16, max_iters=400, eval_interval=50, eval_iters=4, lr=5e-3,
                                  min_lr=5e-4, warmup_iters=20, sample_tokens=40),
                       finetune_iters=60, finetune_interval=20, finetune_lr=2e-3, eval_batches=4,
                       schedule_iters=200, schedule_interval=25, schedule_gamma=0.5, sample_tokens=100,
                       softmax_show=3)
        return cls(quick=False, corpus_chars=None,
                   model=dict(n_layers=4, n_heads=4, emb_dim=128, context_length=64),
                   train=dict(batch_size=12, max_iters=2000, eval_interval=250, eval_iters=20, lr=1e-3,
                              min_lr=1e-4, warmup_iters=100, sample_tokens=200))

    def base_config(self, **kw):
        return TrainConfig(**{**self.model, **self.train, "seed": 1337, **kw})


class _Steps:
    """Numbered progress lines with the time each step took."""

    def __init__(self, total):
        self.total, self.k, self.t0, self.times = total, 0, time.perf_counter(), {}
        self._name, self._start = None, None

    def __call__(self, name):
        self._finish()
        self.k += 1
        self._name, self._start = name, time.perf_counter()
        print(f"\n[{self.k}/{self.total}] {name}  (lab time so far {time.perf_counter() - self.t0:.0f} s)", flush=True)

    def _finish(self):
        if self._name is not None:
            self.times[self._name] = time.perf_counter() - self._start

    def done(self):
        self._finish()
        return time.perf_counter() - self.t0


def prepare_texts(lc, data_dir):
    """{name: text} of the three corpora (sliced in quick mode, written to data_dir) and
    {name: TrainConfig fields that select that corpus}."""
    from scratchgpt.corpora import load_text
    os.makedirs(data_dir, exist_ok=True)
    texts, source = {}, {}
    for name in DOMAINS:
        text = load_text(name)
        if lc.corpus_chars:
            text = text[: lc.corpus_chars]
            path = os.path.abspath(os.path.join(data_dir, f"{name}.txt"))
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            source[name] = {"text_file": path, "dataset": name}
        else:
            source[name] = {"dataset": name, "text_file": None}
        texts[name] = text
    return texts, source


def run_lab(out_dir, quick=False, progress=True, threads=1, config=None):
    """Train what the analyses need, run them all, write <out_dir>/report.md. Returns
    {"report": path, "seconds": wall time, "results": {analysis: numbers}, "runs": {name: run dir}}.

    threads: BLAS threads for the matrix products (None: leave the BLAS default). One is the
    default: these models' matrices are small, and on a busy 2-core machine OpenBLAS's second
    thread made a step of the full lab's model 4x slower instead of faster.
    config: a LabConfig to use instead of the quick or full preset."""
    with blas_threads(threads):
        return _run_lab(out_dir, config or LabConfig.preset(quick), progress)


def _run_lab(out_dir, lc, progress):
    use_numpy_backend()
    fig_dir = os.path.join(out_dir, "figures")
    run_dir = os.path.join(out_dir, "runs")
    os.makedirs(fig_dir, exist_ok=True)
    step = _Steps(12)
    R, md = {}, {}

    step("corpora: character statistics and one shared vocabulary")
    texts, source = prepare_texts(lc, os.path.join(out_dir, "data"))
    tok = crossdomain.shared_char_tokenizer(texts.values(), extra="".join(SOFTMAX_PROMPTS) + schedules.PROMPT
                                            + "".join(SAMPLE_PROMPTS.values()) + "".join(GRADCAM_PROMPTS.values()))
    tok.save(os.path.join(out_dir, "data", "shared_vocab.json"))
    print(f"shared vocabulary: {tok.vocab_size} characters")
    R["corpus"] = corpus.analyse_corpora(texts, fig_dir)
    md["corpus"] = corpus.markdown(R["corpus"], "figures")
    del texts

    step("architecture of the domain models")
    base = lc.base_config()
    R["architecture"] = architecture.draw_architecture(base.model_config(tok.vocab_size), fig_dir)
    md["architecture"] = architecture.markdown(R["architecture"], "figures")

    step("training one model per corpus (shared vocabulary)")
    runs = {}
    for name in DOMAINS:
        runs[name] = os.path.join(run_dir, name)
        shutil.rmtree(runs[name], ignore_errors=True)          # a fresh run folder: no stale checkpoints
        print(f"--- {name}: {base.max_iters} iterations")
        train(dataclasses.replace(base, out_dir=runs[name], **source[name]), tokenizer=tok,
              progress=progress, log=brief_log("  "))

    step("loss curves, and the val loss recomputed from every checkpoint")
    R["curves"] = {n: curves.loss_curves(runs[n], fig_dir, name=f"curves_{n}") for n in DOMAINS}
    md["curves"] = curves.markdown(R["curves"], "figures")

    step("samples over training and variability of the final models")
    vocab = {n: samples.training_vocabulary(runs[n], tok) for n in DOMAINS}
    R["samples"] = {n: samples.samples_over_training(runs[n], fig_dir, SAMPLE_PROMPTS[n], seed=0,
                                                     max_new_tokens=lc.sample_tokens, name=f"samples_{n}",
                                                     vocabulary=vocab[n]) for n in DOMAINS}
    md["samples"] = samples.markdown(R["samples"], "figures")
    R["variability"] = {n: variability.sample_variability(runs[n], fig_dir, SAMPLE_PROMPTS[n],
                                                          seeds=range(lc.n_seeds), max_new_tokens=lc.sample_tokens,
                                                          name=f"variability_{n}", vocabulary=vocab[n])
                        for n in DOMAINS}
    md["variability"] = variability.markdown(R["variability"], "figures")
    del vocab

    step("cross-domain evaluation")
    R["crossdomain"] = crossdomain.cross_domain(runs, fig_dir, max_batches=lc.eval_batches)
    md["crossdomain"] = crossdomain.markdown(R["crossdomain"], "figures")

    step(f"fine-tuning every model on every other corpus ({lc.finetune_iters} iterations each, 12 runs)")
    R["finetune"] = finetune.finetune_pairs(runs, fig_dir, iters=lc.finetune_iters, eval_interval=lc.finetune_interval,
                                            lr=lc.finetune_lr, batch_size=base.batch_size,
                                            eval_batches=lc.eval_batches, progress=progress,
                                            work_dir=os.path.join(run_dir, "finetune"))
    md["finetune"] = finetune.markdown(R["finetune"], "figures")

    step("next-character softmax over training")
    R["softmax"] = softmax.softmax_inspection(runs, list(SOFTMAX_PROMPTS), fig_dir, n_show=lc.softmax_show,
                                              focus=SOFTMAX_FOCUS)
    md["softmax"] = softmax.markdown(R["softmax"], "figures")

    step("Grad-CAM on the domain models, and on a toy task with a known answer")
    items = []
    for n in DOMAINS:
        model, mtok, _ = load_model(final_checkpoint(runs[n]))
        items.append({"label": n, "model": model, "tokenizer": mtok, "prompt": GRADCAM_PROMPTS[n]})
    R["gradcam"] = gradcam.gradcam_analysis(items, fig_dir)
    R["gradcam_toy"] = gradcam.copy_task_check(fig_dir, iters=lc.toy_iters)
    md["gradcam"] = gradcam.markdown(R["gradcam"], "figures", toy=R["gradcam_toy"])

    step("weight distributions before and after training (Shakespeare model)")
    R["weights"] = weights.weight_distributions(runs["shakespeare"], fig_dir)
    md["weights"] = weights.markdown(R["weights"], "figures")

    step("learning-rate schedules (Shakespeare, one seed)")
    sbase = dataclasses.replace(base, max_iters=lc.schedule_iters, eval_interval=lc.schedule_interval,
                                **source["shakespeare"])
    R["schedules"] = schedules.compare_schedules(sbase, fig_dir, tok, milestone_every=50, gamma=lc.schedule_gamma,
                                                 max_new_tokens=min(lc.sample_tokens, 150), progress=progress,
                                                 work_dir=os.path.join(run_dir, "schedules"))
    md["schedules"] = schedules.markdown(R["schedules"], "figures")

    step("writing report.md")
    seconds = step.done()
    path = os.path.join(out_dir, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_report(md, lc, base, tok, step.times, seconds))
    print(f"\nlab done in {seconds:.0f} s: {path}")
    return {"report": path, "seconds": seconds, "results": R, "runs": runs}


SECTIONS = [("corpus", "1. The corpora"), ("architecture", "2. The architecture"),
            ("samples", "3. Samples over training"), ("variability", "4. Variability of the final models"),
            ("curves", "5. Loss curves"), ("crossdomain", "6. Cross-domain evaluation"),
            ("finetune", "7. Fine-tuning on another domain, and forgetting"),
            ("softmax", "8. The next-character softmax"), ("gradcam", "9. Grad-CAM: which characters matter"),
            ("weights", "10. Weights before and after training"), ("schedules", "11. Learning-rate schedules")]


def render_report(md, lc, base, tok, times, seconds):
    from scratchgpt.analysis.common import md_table
    mode = ("quick (tiny models, 50k-character slices: for checking the pipeline, not for conclusions)"
            if lc.quick else "full" if lc == LabConfig.preset(False) else "custom settings")
    setup = md_table(["setting", "value"], [
        ["mode", mode],
        ["corpora", ", ".join(DOMAINS)
         + (f" (first {lc.corpus_chars:,} characters each)" if lc.corpus_chars else " (complete)")],
        ["vocabulary", f"{tok.vocab_size} characters, shared by all models (union of the corpora)"],
        ["model", ", ".join(f"{k}={v}" for k, v in lc.model.items())],
        ["training", f"{base.max_iters} iterations, batch {base.batch_size}, lr {base.lr:g} ({base.lr_schedule}, "
                     f"warmup {base.warmup_iters}, min {base.min_lr:g}), eval every {base.eval_interval}, "
                     f"seed {base.seed}"],
        ["wall time", f"{seconds:.0f} s (per step: see the end of the report)"]])
    parts = ["# scratchgpt lab report", setup,
             "Losses are mean cross-entropy in nats per character (divide by ln 2 = 0.693 for bits). "
             "Every number below is computed by this run; the CSV/JSON files in `figures/` hold them all."]
    for key, title in SECTIONS:
        parts += [f"## {title}", md[key]]
    parts += ["## Run time", md_table(["step", "seconds"], [[k, f"{v:.1f}"] for k, v in times.items()]
                                      + [["**total**", f"**{seconds:.1f}**"]])]
    return "\n\n".join(parts) + "\n"


# ---- command line ------------------------------------------------------------------------
def register_cli(subparsers):
    """Add `scratchgpt lab --out-dir DIR [--quick]` to the `scratchgpt` command."""
    p = subparsers.add_parser("lab", help="train small models and run every analysis into one report.md; "
                                         "`lab weights`: GPT-2's weights before and after training")
    # --out-dir is required unless a mode follows (cmd_lab checks it, as argparse cannot say so)
    p.add_argument("--out-dir", help="folder for report.md, figures/, runs/ and data/")
    p.add_argument("--quick", action="store_true",
                   help="tiny models on 50k-character slices (a few minutes; checks the pipeline)")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS threads for the matrix products (default 1; 0: the BLAS default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_lab, lab_parser=p)
    from scratchgpt.analysis.gpt2_weights import add_cli
    add_cli(p.add_subparsers(dest="lab_mode", metavar="{weights}"))
    return p


def cmd_lab(args):
    if args.out_dir is None:
        args.lab_parser.error("the following arguments are required: --out-dir")
    res = run_lab(args.out_dir, quick=args.quick, progress=not args.no_progress,
                  threads=args.threads if args.threads > 0 else None)
    print(f"open {res['report']}")
    return 0
