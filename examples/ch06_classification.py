"""Chapter 6 of "Build a Large Language Model (From Scratch)": fine-tuning for classification.

A pretrained GPT gets a new output layer, emb_dim -> num_classes, read at the last token;
everything but the last transformer block, the final LayerNorm and that head is frozen, and
AdamW trains the rest. The book classifies SMS messages as spam or not; offline we classify
passages of a few sentences by the corpus they come from (Shakespeare, Wikipedia, generated
mathematics), 300 of each, split 70/10/20. The book's spam file works too (--csv).

    python examples/ch06_classification.py                     # plots to out/ch06_classification/
    python examples/ch06_classification.py --csv train.csv     # the book's SMS spam data (Label,Text)
    python examples/ch06_classification.py --gpt2-dir models/gpt2   # start from GPT-2 (124M)
    python examples/ch06_classification.py --smoke --out /tmp/ch06

Without --gpt2-dir or --out-dir the base model is a small BPE GPT pretrained briefly on the
three corpora (scratchgpt.finetune.pretrain_base), kept in out/finetune-base and reused.
"""
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))   # the fine-tuning examples share _finetuning.py
from _finetuning import argument_parser, base_model, fastest_steps, plot_curves, section  # noqa: E402

from scratchgpt import finetune as ft  # noqa: E402


def step_time_saving(model, tok, data, max_length, n=6):
    """The same steps with everything trainable and with the book's last block + norm + head:
    the frozen backward stops at the last block and never reaches the embeddings."""
    section("Frozen layers make a step cheaper")
    batch = next(ft.classification_batches(ft.encode_examples(data.train, tok, max_length), 8, ft.pad_id_for(tok)))
    models = {spec: copy.deepcopy(model).set_trainable(ft.trainable_prefixes(model, spec))
              for spec in ("all", "last-block")}
    t = fastest_steps(models, batch, n)
    full, frozen = t["all"], t["last-block"]
    print(f"fastest of {n} steps, batch {batch[0].shape}: all {models['all'].num_trainable_parameters():,} parameters "
          f"trainable {full * 1e3:.1f} ms; last block + final norm + head "
          f"({models['last-block'].num_trainable_parameters():,}) {frozen * 1e3:.1f} ms "
          f"-> {full / frozen:.2f}x faster, {1 - frozen / full:.0%} saved")
    return full, frozen


def main(argv=None):
    p = argument_parser(__doc__, "out/ch06_classification")
    p.add_argument("--csv", help="a CSV/TSV of text,label instead of the corpus passages")
    p.add_argument("--lr", type=float, default=None, help="default 5e-5 for GPT-2 (the book's), 1e-3 otherwise")
    p.add_argument("--per-class", type=int, default=None, help="passages per corpus (default 300)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    section("6.2 The dataset")
    if args.csv:
        data = ft.load_csv_dataset(args.csv, seed=0)
    else:
        data = ft.corpus_passages_dataset(args.per_class or (20 if args.smoke else 300), seed=0)
    print(data.summary())
    for text, label in data.train[:3]:
        print(f"  [{data.labels[label]}] {text[:110]}{'...' if len(text) > 110 else ''}")

    notes = []
    model, tok = base_model(args, out, log=notes.append)   # its tokenizer makes the batches of 6.3
    c = model.cfg
    notes.append(f"{model.num_parameters():,} parameters: {c.n_layers} blocks, emb_dim {c.emb_dim}, "
                 f"context {c.context_length}, vocabulary {c.vocab_size} ({tok!r})")

    section("6.3 Batches: padded with <|endoftext|>, classified at the last real token")
    max_length = ft.classification_max_length(model, tok, data)
    ids, lengths, labels = next(ft.classification_batches(ft.encode_examples(data.train, tok, max_length), 8,
                                                          ft.pad_id_for(tok)))
    print(f"longest training text: {max_length} tokens; pad id {ft.pad_id_for(tok)}; first batch ids "
          f"{ids.shape}, lengths {lengths.tolist()}, labels {labels.tolist()}")

    section("6.4 A pretrained model to start from")
    print("\n".join(notes))

    section("6.5 A classification head instead of the LM head; freeze all but the top")
    model = ft.add_classification_head(model, len(data.labels))
    trainable = ft.trainable_prefixes(model, "last-block")
    model.freeze(trainable)
    n, total = model.num_trainable_parameters(), model.num_parameters()
    print(f"score: emb_dim {model.cfg.emb_dim} -> {len(data.labels)} classes; trainable {n:,} of {total:,} "
          f"({n / total:.1%}): {', '.join(trainable)}")

    section("6.6 Accuracy before fine-tuning (chance: 1 in %d)" % len(data.labels))
    before = ft.accuracy_table(model, tok, data, max_length)
    print(", ".join(f"{k} {v:.1%}" for k, v in before.items()))

    full_s, frozen_s = step_time_saving(model, tok, data, max_length, n=3 if args.smoke else 8)

    section("6.7 Fine-tuning")
    hist = ft.train_classifier(model, tok, data, epochs=args.epochs or (1 if args.smoke else 2),
                               lr=args.lr or (5e-5 if args.gpt2_dir else 1e-3), eval_freq=5 if args.smoke else 10,
                               max_length=max_length)
    print(f"{len(hist['step_times'])} steps, median {statistics.median(hist['step_times']) * 1e3:.1f} ms each")
    after = ft.accuracy_table(model, tok, data, max_length)
    for k in before:
        print(f"{k:>5} accuracy: {before[k]:.1%} -> {after[k]:.1%}")
    plot_curves(hist, out / "classification_curves.png", before)

    section("6.8 Using the classifier")
    examples = ["To be, or not to be, that is the question.",
                "The derivative of x^2 + 3x is 2x + 3.",
                "Paris is the capital and largest city of France."]
    if args.csv:
        examples = [t for t, _ in data.test[:3]]
    for text in examples:
        print(f"  {ft.classify_text(model, tok, text, data.labels, max_length):>12}  <- {text}")
    state = {"task": "classification", "labels": data.labels, "max_length": max_length,
             "pad_id": ft.pad_id_for(tok), "accuracy_before": before, "accuracy_after": after}
    for path in ft.save_finetuned(str(out / "classifier"), model, tok, state):
        print(f"wrote {path}")
    print(f"done in {time.time() - t0:.1f} s (a frozen step took {frozen_s / full_s:.0%} of a full one)")


if __name__ == "__main__":
    main()
