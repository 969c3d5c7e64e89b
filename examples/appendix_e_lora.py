"""Appendix E of "Build a Large Language Model (From Scratch)": parameter-efficient fine-tuning with LoRA.

Instead of updating a weight W, LoRA learns a low-rank change: y = x W + (alpha / r) (x A) B
with A (in, r) random and B (r, out) zero at the start, so training starts from exactly the
pretrained model, and only r (in + out) numbers per layer train. As in the book, the task is
chapter 6's classifier (here: which corpus a passage comes from); the adapters go on every
linear layer of every block, the new classification head trains in full.

    python examples/appendix_e_lora.py                        # plots to out/appendix_e_lora/
    python examples/appendix_e_lora.py --gpt2-dir models/gpt2 --csv train.csv   # the book's setting
    python examples/appendix_e_lora.py --smoke --out /tmp/lora

Afterwards the adapters are saved alone (a small .npz) and merged into the weights,
W' = W + (alpha / r) A B, which gives the same logits as the unmerged model.
"""
import copy
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))   # the fine-tuning examples share _finetuning.py
from _finetuning import argument_parser, base_model, fastest_steps, plot_curves, section  # noqa: E402

from scratchgpt import GPTConfig, checkpoint, lora  # noqa: E402
from scratchgpt import finetune as ft  # noqa: E402


def lora_layer_demo():
    section("E.1 A LoRA layer")
    rng = np.random.default_rng(0)
    x, W = rng.standard_normal((2, 6)), rng.standard_normal((6, 4))
    A = rng.uniform(-1 / np.sqrt(2), 1 / np.sqrt(2), (6, 2))      # the book's kaiming_uniform_(a=sqrt(5))
    B = np.zeros((2, 4))                                        # B = 0: the layer is unchanged at first
    y, _ = lora.lora_forward(x, A, B, scale=1.0)
    print(f"x W + (alpha/r) x A B with B = 0 adds {np.abs(y).max():.1f}: training starts from the pretrained model")
    cfg = GPTConfig(vocab_size=50257, context_length=1024, emb_dim=768, n_heads=12, n_layers=12, qkv_bias=True)
    n = lora.lora_parameter_count(cfg, 16)
    print(f"GPT-2 small (124,439,808 parameters), rank 16 on every linear of every block: {n:,} adapter "
          f"parameters, {n / 124_439_808:.2%} of the model")
    print("  (the book counts 2,666,528: its GPT has separate W_query/W_key/W_value, three adapters where "
          "GPT-2's fused c_attn has one, plus an adapter on its 2-class out_head)")


def main(argv=None):
    p = argument_parser(__doc__, "out/appendix_e_lora")
    p.add_argument("--csv", help="a CSV/TSV of text,label (the book's SMS spam train.csv) instead")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (default 8; the book: 16)")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    p.add_argument("--lr", type=float, default=None, help="default 2e-3 (5e-4 with --gpt2-dir)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    lora_layer_demo()

    section("E.2 / E.3 Data, a pretrained model and a classification head (as in chapter 6)")
    data = (ft.load_csv_dataset(args.csv, seed=0) if args.csv
            else ft.corpus_passages_dataset(20 if args.smoke else 200, seed=0))
    print(data.summary())
    model, tok = base_model(args, out)
    model = ft.add_classification_head(model, len(data.labels))
    max_length = ft.classification_max_length(model, tok, data)

    section("E.4 LoRA adapters on every linear layer; everything else frozen")
    rank = args.rank or (4 if args.smoke else 8)
    lmodel = lora.add_lora(model, rank, args.alpha, trainable=["score"])
    n_lora = len(lora.lora_names(lmodel))
    n, total = lmodel.num_trainable_parameters(), lmodel.num_parameters()
    print(f"rank {rank}, alpha {lmodel.extensions['lora_alpha']:g}: {n_lora} adapter matrices; trainable {n:,} of "
          f"{total:,} ({n / total:.1%}, the classification head included); the base model alone: "
          f"{model.num_parameters():,}")
    before = ft.accuracy_table(lmodel, tok, data, max_length)
    print("accuracy before: " + ", ".join(f"{k} {v:.1%}" for k, v in before.items()))

    batch = next(ft.classification_batches(ft.encode_examples(data.train, tok, max_length), 8, ft.pad_id_for(tok)))
    full = copy.deepcopy(model).set_trainable(None)     # a copy, everything trainable
    t = fastest_steps({"full": full, "lora": lmodel}, batch, 3 if args.smoke else 6)
    print(f"fastest step: full fine-tuning {t['full'] * 1e3:.1f} ms, LoRA {t['lora'] * 1e3:.1f} ms "
          f"(LoRA still runs the whole backward, but skips every frozen weight's dW)")
    del full

    lr = args.lr or (5e-4 if args.gpt2_dir else 2e-3)     # alpha / r = 1 here, alpha = 16 in the book's code
    hist = ft.train_classifier(lmodel, tok, data, epochs=args.epochs or (1 if args.smoke else 2), lr=lr,
                               eval_freq=5 if args.smoke else 20, max_length=max_length)
    after = ft.accuracy_table(lmodel, tok, data, max_length)
    for k in before:
        print(f"{k:>5} accuracy: {before[k]:.1%} -> {after[k]:.1%}")
    plot_curves(hist, out / "lora_curves.png", before, title="LoRA fine-tuning: loss")

    section("Saving the adapters alone, and merging them into the weights")
    path = out / "lora_adapters.npz"
    size = lora.save_adapters(lmodel, path)
    merged = lora.merge_lora(lmodel)
    checkpoint.save(out / "merged.npz", merged, tok, train_state={"task": "classification", "labels": data.labels})
    print(f"{path}: {size / 1024:.0f} KiB (adapters only); the whole merged model: "
          f"{os.path.getsize(out / 'merged.npz') / 1024:.0f} KiB")
    ids, lengths, _ = batch
    a = ft.last_token_logits(lmodel.eval(), ids, lengths)[1]
    b = ft.last_token_logits(merged.eval(), ids, lengths)[1]
    test_acc = ft.evaluate_classifier(merged, ft.encode_examples(data.test, tok, max_length), ft.pad_id_for(tok))[0]
    print(f"W + (alpha/r) A B: merged and unmerged logits differ by at most {np.abs(a - b).max():.2e} "
          f"(float32); the merged model's test accuracy: {test_acc:.1%}")
    again = lora.load_adapters(model, path)             # the base model + the saved adapters
    c = ft.last_token_logits(again.eval(), ids, lengths)[1]
    print(f"base model + loaded adapters: logits differ by {np.abs(a - c).max():.2e}")
    print(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
