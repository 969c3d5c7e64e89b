"""Chapter 7 of "Build a Large Language Model (From Scratch)": fine-tuning to follow instructions.

Instruction/response pairs in the book's Alpaca-style prompt; batches padded with
<|endoftext|> whose targets ignore (-100) the prompt and the padding, so the loss is the
response's alone; the whole model trained with AdamW; responses before and after, and a
held-out evaluation. The book's instruction-data.json works as is (--json); offline we ask
about Wikipedia's vital articles ("Describe X in one sentence." -> its short description,
"What is X?" -> the first sentence of its summary, "Which area of knowledge is this text
about?" -> its topic) and hold whole articles out for evaluation.

    python examples/ch07_instructions.py                      # plots to out/ch07_instructions/
    python examples/ch07_instructions.py --json instruction-data.json --gpt2-dir models/gpt2-medium
    python examples/ch07_instructions.py --lora-rank 8        # appendix E's LoRA instead
    python examples/ch07_instructions.py --smoke --out /tmp/ch07

The book scores responses with Llama 3 (through Ollama); without a judge model we report the
held-out response loss and, for the topic questions, how often the answer is exactly right.
Then talk to the model: scratchgpt chat --out-dir out/ch07_instructions/sft

What to expect: the book fine-tunes GPT-2 medium (355M parameters, pretrained on 40 GB of
text). The small base model trained here in a minute on a CPU (0.65M parameters) has no
facts to recall: fine-tuning teaches it the *shape* of the answers (a short description, a
sentence, a topic name, then <|endoftext|>), and the held-out loss falls accordingly, but the
answers are mostly wrong. With --gpt2-dir the same code reproduces the book's setting.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))   # the fine-tuning examples share _finetuning.py
from _finetuning import argument_parser, base_model, plot_curves, section  # noqa: E402

from scratchgpt import finetune as ft  # noqa: E402


def collate_demo():
    section("7.3 Batches: pad with <|endoftext|>, shift, mask with -100")
    batch = [([0, 1, 2, 3, 4], 0), ([5, 6], 0), ([7, 8, 9], 0)]       # the book's three toy inputs
    inputs, targets = ft.collate_instructions(batch, pad_id=50256)
    print("the book's custom_collate_fn (padding after the first <|endoftext|> masked):")
    print(inputs)
    print(targets)
    inputs, targets = ft.collate_instructions([(ids, 2) for ids, _ in batch], pad_id=50256)
    print("with the first 2 tokens of each as the prompt (masked as well, exercise 7.2):")
    print(targets)


def topic_accuracy(model, tok, test):
    """Exact-match accuracy of the answers to "Which area of knowledge ...?" (greedy)."""
    asks = [e for e in test if e["instruction"].startswith("Which area of knowledge")]
    if not asks:
        return None, 0
    hits = sum(ft.generate_response(model, tok, e, max_new_tokens=8) == e["output"] for e in asks)
    return hits / len(asks), len(asks)


def main(argv=None):
    p = argument_parser(__doc__, "out/ch07_instructions",
                        gpt2_help="a GPT-2 folder (the book uses gpt2-medium, 355M)")
    p.add_argument("--json", help="a JSON list of {instruction, input, output}, e.g. the book's")
    p.add_argument("--n-articles", type=int, default=None, help="Wikipedia articles for the default data (200)")
    p.add_argument("--lr", type=float, default=None, help="default 5e-5 for GPT-2 (the book's), 1e-3 otherwise")
    p.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank instead")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    section("7.2 The dataset")
    if args.json:
        entries = ft.load_instruction_json(args.json)
    else:
        entries = ft.wikipedia_instructions(args.n_articles or (20 if args.smoke else 200), seed=0)
    train, val, test = ft.split_instructions(entries)
    print(f"{len(entries)} entries: {len(train)} train, {len(val)} validation, {len(test)} test "
          f"(the book's 85/5/10)")
    print("one of them in the Alpaca prompt format:\n")
    print(ft.format_prompt(train[0]) + train[0]["output"])

    collate_demo()

    section("7.5 A pretrained model to start from")
    model, tok = base_model(args, out)
    ft.require_eot(tok)
    lens = [len(ft.encode_instruction(e, tok)[0]) + 1 for e in train]
    print(f"{model.num_parameters():,} parameters, context {model.cfg.context_length}; examples are "
          f"{min(lens)}-{max(lens)} tokens (median {int(np.median(lens))}); longer ones are cut to the context")
    if args.lora_rank:
        from scratchgpt.lora import add_lora
        model = add_lora(model, args.lora_rank)
    n, total = model.num_trainable_parameters(), model.num_parameters()
    print(f"training {n:,} of {total:,} parameters ({n / total:.1%})" + (" (LoRA)" if args.lora_rank else ""))

    section("7.6 Fine-tuning on the instructions")
    test_set = [ft.encode_instruction(e, tok) for e in test]
    shown = test[:3]
    before = [ft.generate_response(model, tok, e, max_new_tokens=40) for e in shown]
    loss_before = ft.response_loss(model, test_set, tok.eot_id)
    acc_before, n_topic = topic_accuracy(model, tok, test)
    lr = args.lr or (5e-5 if args.gpt2_dir and not args.lora_rank else 3e-3 if args.lora_rank else 1e-3)
    hist = ft.train_instructions(model, tok, train, val, epochs=args.epochs or (1 if args.smoke else 2),
                                 lr=lr, eval_freq=5 if args.smoke else 25, eval_iter=5)
    loss_after = ft.response_loss(model, test_set, tok.eot_id)
    print(f"{len(hist['step_times'])} steps, median {np.median(hist['step_times']) * 1e3:.0f} ms each")
    print(f"held-out response loss: {loss_before:.3f} before -> {loss_after:.3f} after")
    plot_curves(hist, out / "instruction_loss.png", title="instruction fine-tuning",
                ylabel="response cross-entropy")

    section("7.7 Responses to held-out instructions, before and after")
    from scratchgpt.lora import merge_lora
    plain = merge_lora(model)                     # adapters (if any) folded in once, for generation
    responses = []
    for e, b in zip(shown, before):
        r = ft.generate_response(plain, tok, e, max_new_tokens=40)
        responses.append(dict(e, model_response=r))
        print(f"\n{ft.format_input(e)}\n\n  correct: {e['output']}\n  before:  {b!r}\n  after:   {r!r}")

    section("7.8 Evaluation")
    acc_after, _ = topic_accuracy(plain, tok, test)
    if acc_after is not None:
        print(f"'Which area of knowledge is this text about?' ({n_topic} held-out): exactly right "
              f"{acc_before:.0%} before, {acc_after:.0%} after")
    print(f"held-out response loss {loss_before:.3f} -> {loss_after:.3f}")
    state = {"task": "instruction", "instruction_tuned": True, "prompt_format": "alpaca",
             "response_loss_before": loss_before, "response_loss_after": loss_after}
    for path in ft.save_finetuned(str(out / "sft"), model, tok, state):
        print(f"wrote {path}")
    (out / "responses.json").write_text(json.dumps(responses, indent=1, ensure_ascii=False))
    print(f"talk to it: scratchgpt chat --out-dir {out / 'sft'}")
    print(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
