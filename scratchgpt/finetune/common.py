"""What both fine-tuning chapters share: what trains, the step, base models, saving."""
import os
import re
import time

from scratchgpt import checkpoint
from scratchgpt.lora import add_lora, lora_parameter_count, merge_lora, save_adapters

IGNORE_INDEX = -100
BASE_DIR = os.path.join("out", "finetune-base")   # where pretrain_base's model is kept by default
CHAR_PAD_ID = 0       # a character tokenizer has no <|endoftext|>; any id works (see above)



# ---- training only what is trainable (optim.TrainableParams packs those parameters for AdamW)
def trainable_prefixes(model, spec):
    """What trains, by name: "all", "head", "last-block" (the book's chapter 6 choice: the last
    block, the final LayerNorm and the head) or "last-N" (the last N blocks, final norm, head).

    A tied head is the token embedding: training it means a backward through every block,
    so for a tied LM head "head" and "last-N" leave it frozen.
    """
    if spec == "all":
        return None
    cfg = getattr(model, "cfg", model)          # a model, or a language model's config
    classifier = bool(getattr(model, "extensions", {}).get("num_classes"))
    head = ["score"] if classifier else ([] if cfg.tie_weights else ["lm_head.weight"])
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



def timed_step(model, loss_and_backward, params, opt, grad_clip=None):
    """One step (zero_grad, forward + backward, AdamW); returns (loss, seconds)."""
    t0 = time.perf_counter()
    model.zero_grad()
    loss = loss_and_backward()
    params.step(opt, grad_clip)
    return loss, time.perf_counter() - t0


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
    os.makedirs(save_dir, exist_ok=True)
    paths = []
    ext = model.extensions
    if ext.get("lora_rank"):
        paths.append(os.path.join(save_dir, "lora_adapters.npz"))
        save_adapters(model, paths[-1])
        train_state = dict(train_state, lora={"rank": ext["lora_rank"], "alpha": ext["lora_alpha"],
                                              "targets": list(ext["lora_targets"]), "merged": True})
    paths.insert(0, os.path.join(save_dir, "ckpt_latest.npz"))
    checkpoint.save(paths[0], merge_lora(model), tokenizer, train_state=train_state)
    return paths


def _prepare_trainable(model, trainable, lora_rank, lora_alpha, lora_targets, seed, log):
    """Freeze as asked, or add LoRA adapters (then only they and a classification head train)."""
    if lora_rank:
        head = ["score"] if model.extensions.get("num_classes") else []
        model = add_lora(model, lora_rank, lora_alpha, lora_targets, seed=seed, trainable=head)
        ext = model.extensions
        n_lora = lora_parameter_count(model.cfg, lora_rank, lora_targets)
        log(f"LoRA rank {lora_rank}, alpha {ext['lora_alpha']:g} on {', '.join(ext['lora_targets'])}: "
            f"{n_lora:,} adapter parameters")
    else:
        model.set_trainable(trainable_prefixes(model, trainable))
    n, total = model.num_trainable_parameters(), model.num_parameters()
    log(f"trainable parameters: {n:,} of {total:,} ({n / total:.2%})")
    return model


