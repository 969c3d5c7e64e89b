"""The `finetune-cls` (chapter 6) and `finetune-sft` (chapter 7) commands."""
import json
import os
import sys

from scratchgpt.command import run
from scratchgpt.finetune.classify import (accuracy_table, add_classification_head, classification_max_length,
                                          corpus_passages_dataset, load_csv_dataset, pad_id_for, train_classifier)
from scratchgpt.finetune.common import BASE_DIR, _prepare_trainable, load_base, pretrain_base, save_finetuned
from scratchgpt.finetune.instruct import (encode_instruction, format_input, generate_response, load_instruction_json,
                                          require_eot, response_loss, split_instructions, train_instructions,
                                          wikipedia_instructions)
from scratchgpt.lora import merge_lora

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
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
