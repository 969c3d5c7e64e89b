"""The `scratchgpt` command (also `python -m scratchgpt`).

    scratchgpt train                         train the default character-level model on Shakespeare
    scratchgpt sample --out-dir DIR          generate text from a run's latest checkpoint
    scratchgpt eval --out-dir DIR            loss and perplexity of a run's model on a corpus

Errors a user can fix (a missing corpus package, an unknown character, a checkpoint that
does not match) print one line on stderr and exit with status 2, without a traceback.
Under mpiexec (`mpiexec -n 2 scratchgpt train ...`) a rank that fails ends every rank.
"""
import argparse
import json
import math
import os
import sys

from scratchgpt import backend, distributed
from scratchgpt.command import USER_ERRORS, run  # noqa: F401  (run: also cli.run)


def _train_parser(sub):
    from scratchgpt.train import TrainConfig
    d = TrainConfig()
    p = sub.add_parser("train", help="train a GPT (defaults: a small character-level model on Shakespeare)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", default=d.dataset, help="shakespeare (default), wikipedia or math")
    src.add_argument("--text-file", help="train on any UTF-8 text file instead")
    p.add_argument("--tokenizer", default=d.tokenizer, help="char (default), gpt2 or bpe:N")
    p.add_argument("--arch", default=d.arch, choices=["gpt2", "llama3", "qwen3"],
                   help="gpt2 (default), or the book's bonus chapters: llama3, qwen3")
    for name in ("n_layers", "n_heads", "emb_dim", "context_length", "hidden_dim", "n_kv_groups", "batch_size", "max_iters",
                 "warmup_iters", "grad_accum", "eval_interval", "eval_iters", "seed", "sample_tokens"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("drop_rate", "lr", "min_lr", "weight_decay", "gamma", "grad_clip", "beta1", "beta2"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=["constant", "multistep", "cosine"])
    p.add_argument("--milestones", default="", help="comma-separated iterations for multistep, e.g. 50,100,150")
    p.add_argument("--sample-prompt", default=d.sample_prompt)
    p.add_argument("--out-dir", default=None, help="run folder (default out/<dataset>-<tokenizer>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its latest checkpoint")
    p.add_argument("--init-from", help="start from another run's weights (fresh optimizer, new --out-dir)")
    p.add_argument("--backend", default=backend.name, choices=["numpy", "cupy"])
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "float64"])
    _precision_argument(p)
    p.add_argument("--zero1", action="store_true",
                   help="under mpiexec: each process keeps only its share of AdamW's state (ZeRO-1)")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="GPU: record each micro-batch's forward and backward once as a CUDA graph and replay it "
                        "(far fewer kernel launches; small models train several times faster). Default: on "
                        "wherever it can be (--backend cupy, one process, a GPT-2 model); --no-cuda-graph: off")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
    return p


def cmd_train(a):
    from scratchgpt.train import TrainConfig, TrainingInterrupted, train
    milestones = [int(m) for m in a.milestones.split(",") if m.strip()]
    source = os.path.splitext(os.path.basename(a.text_file))[0] if a.text_file else a.dataset
    out_dir = a.out_dir or os.path.join("out", f"{source}-{a.tokenizer.replace(':', '')}")
    if a.resume and a.init_from:
        raise ValueError("--resume and --init-from exclude each other: resume continues a run, "
                         "init-from starts a new one from another run's weights")
    cfg = TrainConfig(dataset=a.dataset, text_file=a.text_file, tokenizer=a.tokenizer, arch=a.arch,
                      hidden_dim=a.hidden_dim, n_kv_groups=a.n_kv_groups, n_layers=a.n_layers, n_heads=a.n_heads, emb_dim=a.emb_dim,
                      context_length=a.context_length, drop_rate=a.drop_rate, batch_size=a.batch_size,
                      max_iters=a.max_iters, lr=a.lr, min_lr=a.min_lr, weight_decay=a.weight_decay,
                      beta1=a.beta1, beta2=a.beta2, lr_schedule=a.lr_schedule, warmup_iters=a.warmup_iters,
                      milestones=milestones, gamma=a.gamma, grad_clip=a.grad_clip, grad_accum=a.grad_accum,
                      eval_interval=a.eval_interval, eval_iters=a.eval_iters, sample_prompt=a.sample_prompt,
                      sample_tokens=a.sample_tokens, seed=a.seed, out_dir=out_dir, init_from=a.init_from,
                      backend=a.backend, dtype=a.dtype, precision=a.precision, zero1=a.zero1,
                      cuda_graph=a.cuda_graph)
    try:
        res = train(cfg, resume=a.resume, progress=not a.no_progress)
    except TrainingInterrupted:
        return 130
    if distributed.world().rank != 0:          # under mpiexec, rank 0 speaks for the run
        return 0
    print(f"done: {res['iter']} iterations, val loss {res['val_loss']:.4f}; run folder {res['out_dir']}")
    print(f"sample more with: scratchgpt sample --out-dir {res['out_dir']}")
    return 0


def _precision_argument(p):
    from scratchgpt.precision import PRECISIONS
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="GPU matrix products: fp32 (default, the CPU's math), tf32 (tensor cores); see docs/gpu.md")


def _load_run(out_dir):
    from scratchgpt.checkpoint import load
    path = out_dir if out_dir.endswith(".npz") else os.path.join(out_dir, "ckpt_latest.npz")
    ck = load(path)
    if ck.tokenizer is None:
        raise ValueError(f"{path} holds no tokenizer, so text cannot be encoded for it")
    return ck.model, ck.tokenizer


def cmd_sample(a):
    from scratchgpt import precision
    from scratchgpt.generate import generate_text
    precision.use(a.precision)
    if a.gpt2_dir:
        from scratchgpt.gpt2 import load_gpt2
        from scratchgpt.tokenizer import BPETokenizer
        model, tok = load_gpt2(a.gpt2_dir), BPETokenizer.gpt2()
    elif a.hf_dir:
        from scratchgpt.hf import load_hf_with_tokenizer
        model, tok = load_hf_with_tokenizer(a.hf_dir)
    else:
        model, tok = _load_run(a.out_dir)
    prompt = a.prompt if a.prompt is not None else "\n"
    try:
        tok.encode(prompt)
    except ValueError as e:
        raise ValueError(f"the prompt cannot be encoded: {e}") from None
    texts = generate_text(model, tok, prompt, a.max_new_tokens, a.temperature, a.top_k, a.top_p,
                          seed=a.seed, num_samples=a.num_samples)
    for i, t in enumerate(texts):
        if a.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        print(t)
    return 0


def cmd_eval(a):
    from scratchgpt import precision
    from scratchgpt.data import prepare_corpus
    from scratchgpt.evaluate import evaluate_loss
    precision.use(a.precision)
    if a.hf_dir:
        from scratchgpt.hf import load_hf_with_tokenizer
        model, tok = load_hf_with_tokenizer(a.hf_dir)
    else:
        model, tok = _load_run(a.out_dir)
    corpus = prepare_corpus(None if a.text_file else a.dataset, text_file=a.text_file, tokenizer=tok)
    loss = evaluate_loss(model, corpus.val if a.split == "val" else corpus.train, a.batch_size,
                         max_batches=a.max_batches)
    print(json.dumps({"loss": loss, "perplexity": math.exp(loss), "split": a.split,
                      "dataset": a.text_file or a.dataset}))
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="scratchgpt", description="A GPT from scratch: train, sample, evaluate.")
    sub = p.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    s = sub.add_parser("sample", help="generate text from a trained run or GPT-2 weights")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--out-dir", help="a run folder made by `scratchgpt train`")
    src.add_argument("--gpt2-dir", help="a Hugging Face GPT-2 folder (config.json + model.safetensors)")
    src.add_argument("--hf-dir", help="a Hugging Face GPT-2, Llama or Qwen3 folder (config.json, "
                                      "model.safetensors, tokenizer.json)")
    s.add_argument("--prompt")
    s.add_argument("--max-new-tokens", type=int, default=200)
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--top-k", type=int)
    s.add_argument("--top-p", type=float)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--num-samples", type=int, default=1)
    _precision_argument(s)
    s.set_defaults(func=cmd_sample)
    e = sub.add_parser("eval", help="loss and perplexity of a run's model on a corpus (prints JSON)")
    model_src = e.add_mutually_exclusive_group(required=True)
    model_src.add_argument("--out-dir", help="a run folder made by `scratchgpt train`")
    model_src.add_argument("--hf-dir", help="a Hugging Face GPT-2, Llama or Qwen3 folder")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--dataset", default="shakespeare")
    src.add_argument("--text-file")
    e.add_argument("--split", default="val", choices=["train", "val"])
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--max-batches", type=int, default=None, help="evaluate only this many batches")
    _precision_argument(e)
    e.set_defaults(func=cmd_eval)
    for register in _more_commands():
        register(sub)
    return p


def _more_commands():
    """Commands that live beside their code: each module has register_cli(subparsers)."""
    from scratchgpt.analysis.lab import register_cli as register_lab
    from scratchgpt.chat import register_cli as register_chat
    from scratchgpt.finetune import register_cli as register_finetune
    from scratchgpt.serve import register_cli as register_serve
    return [register_lab, register_finetune, register_chat, register_serve]


def main(argv=None):
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
