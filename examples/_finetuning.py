"""What the fine-tuning examples (chapter 6, chapter 7, appendix E) share: their common options,
the pretrained model they start from, timing a step, and the loss/accuracy plot.

The scripts import it as the book's chapters import the previous ones (`from _finetuning import
...`); the fine-tuning itself is in scratchgpt.finetune.
"""
import argparse

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from scratchgpt import AdamW, TrainableParams  # noqa: E402
from scratchgpt import finetune as ft  # noqa: E402


def section(title):
    print(f"\n=== {title} ===")


def argument_parser(doc, out, gpt2_help="a GPT-2 folder (config.json + model.safetensors)"):
    """The options of every fine-tuning example: where the base model comes from, --epochs,
    --base-iters, --out and --smoke. A script adds its own (its data, --lr, ...)."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--gpt2-dir", help=gpt2_help)
    src.add_argument("--out-dir", help="a run of `scratchgpt train` to start from (chapter 7: one with a BPE tokenizer)")
    p.add_argument("--epochs", type=int, default=None,
                   help="default 2 (1 with --smoke); the book: 5 in chapter 6 and appendix E, 2 in chapter 7")
    p.add_argument("--base-iters", type=int, default=200, help="pretraining iterations of the small base model")
    p.add_argument("--out", default=out, help="folder for plots and the fine-tuned model")
    p.add_argument("--smoke", action="store_true", help="tiny data and model (for the tests)")
    return p


def base_model(args, out, log=print):
    """(model, tokenizer) to fine-tune: GPT-2 (--gpt2-dir) or a `scratchgpt train` run (--out-dir)
    if given; else the small BPE GPT scratchgpt.finetune.pretrain_base trains on three corpora,
    once (kept in out/finetune-base and reused), or with --smoke a tiny one in OUT/base."""
    if args.gpt2_dir or args.out_dir:
        model, tok, _ = ft.load_base(args.out_dir, args.gpt2_dir)
        log(f"loaded {args.gpt2_dir or args.out_dir}")
    elif args.smoke:
        model, tok = ft.pretrain_base(str(out / "base"), max_iters=10, n_layers=2, emb_dim=32, n_heads=2,
                                      vocab_size=400, chars_per_corpus=50_000, log=log)
    else:
        model, tok = ft.pretrain_base(ft.BASE_DIR, max_iters=args.base_iters, log=log)
    return model, tok


def fastest_steps(models, batch, n):
    """{name: seconds}, the fastest of n classifier steps of each model on the same batch. Steps
    alternate between the models, after one warm-up each, and each keeps its fastest (other
    processes only ever add time). The learning rate is tiny: the steps are for the clock."""
    opts = {}
    for k, m in models.items():
        params = TrainableParams(m)                          # only the trainable parameters
        opts[k] = (params, AdamW(params, lr=1e-6))
    times = {k: [] for k in models}
    for rep in range(n + 1):
        for k, m in models.items():
            _, dt = ft.timed_step(m, lambda: ft.classifier_loss_and_backward(m, *batch), *opts[k])
            if rep:
                times[k].append(dt)
    return {k: min(v) for k, v in times.items()}


def plot_curves(hist, path, before=None, title="loss", ylabel="cross-entropy"):
    """Training and validation loss per step (hist from ft.train_classifier or
    ft.train_instructions); given the accuracies `before` fine-tuning, a second panel with the
    accuracy per epoch, epoch 0 being before."""
    fig, axes = plt.subplots(1, 2 if before else 1, figsize=(10 if before else 6, 3.5), squeeze=False)
    a = axes[0, 0]
    a.plot(hist["steps"], hist["train_losses"], label="training")
    a.plot(hist["steps"], hist["val_losses"], "--", label="validation")
    a.set_xlabel("step")
    a.set_ylabel(ylabel)
    a.set_title(title)
    a.legend()
    if before:
        b = axes[0, 1]
        epochs = range(len(hist["train_accs"]) + 1)
        b.plot(epochs, [before["train"]] + hist["train_accs"], "o-", label="training")
        b.plot(epochs, [before["val"]] + hist["val_accs"], "o--", label="validation")
        b.set_xlabel("epoch")
        b.set_xticks(list(epochs))
        b.set_ylim(0, 1.02)
        b.set_ylabel("accuracy")
        b.set_title("accuracy")
        b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
