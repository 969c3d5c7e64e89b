"""Chapter 5 of "Build a Large Language Model (From Scratch)": pretraining on unlabeled data.

The loss of an untrained model, training a small character-level GPT on a short text with the
book's train_model_simple, temperature and top-k sampling on the book's nine-word vocabulary,
saving and loading a checkpoint, and (with --gpt2-dir) text from OpenAI's GPT-2 weights.

    python examples/ch05_pretraining.py                       # plots to out/ch05_pretraining/
    python examples/ch05_pretraining.py --text-file the-verdict.txt
    python examples/ch05_pretraining.py --gpt2-dir models/gpt2   # a Hugging Face GPT-2 folder
    python examples/ch05_pretraining.py --smoke --out /tmp/ch05

The book pretrains its 124M-parameter model with GPT-2's tokenizer on "The Verdict" (~5,000
tokens), which takes minutes on a laptop; here a ~0.2M-parameter model with one token per
character learns from the same amount of text (the chapter 2 text: a Shakespeare excerpt)
in well under a minute on a CPU. Random numbers come from NumPy (seeded), so sampled
counts differ from the book's torch.manual_seed(123) ones.
"""
import argparse
import math
import os
import sys
import time
from pathlib import Path

# The matrices here are tiny: one BLAS thread is faster than several waiting on each other
# (on a busy 2-core machine this run took 7x longer with OpenBLAS's default threads).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))   # the book imports previous chapters, so do we
from ch02_text_data import read_text  # noqa: E402

from scratchgpt import AdamW, GPTModel, checkpoint  # noqa: E402
from scratchgpt.data import create_dataloader_v1  # noqa: E402
from scratchgpt.generate import generate, sample_next  # noqa: E402
from scratchgpt.ops import softmax_forward  # noqa: E402
from scratchgpt.tokenizer import BPETokenizer, CharTokenizer  # noqa: E402

np.set_printoptions(precision=4, suppress=True)

GPT_CONFIG_SMALL = {      # the book's GPT_CONFIG_124M, shrunk to train on a CPU in seconds
    "vocab_size": None,    # set from the tokenizer (one id per distinct character)
    "context_length": 64,
    "emb_dim": 96,
    "n_heads": 4,
    "n_layers": 2,
    "drop_rate": 0.0,      # the book: 0.1; a model this small learns faster without dropout
    "qkv_bias": False,
}


def softmax(x):
    return softmax_forward(x)[0]


def text_to_token_ids(text, tokenizer):
    return np.array(tokenizer.encode(text))[None, :]          # add the batch dimension


def token_ids_to_text(token_ids, tokenizer):
    return tokenizer.decode(np.asarray(token_ids)[0].tolist())  # remove the batch dimension


# ---- 5.1.2 Calculating the text generation loss ----------------------------------------------
def text_generation_loss():
    print("=== 5.1.1 Using GPT to generate text (an untrained model, GPT-2's tokenizer) ===")
    tokenizer = BPETokenizer.gpt2()
    # an untrained model with GPT-2's 50,257-token vocabulary (small in every other dimension)
    model = GPTModel({"vocab_size": 50257, "context_length": 256, "emb_dim": 64, "n_heads": 4,
                      "n_layers": 2, "drop_rate": 0.0, "qkv_bias": False}, seed=123)
    token_ids = generate(model, text_to_token_ids("Every effort moves you", tokenizer), max_new_tokens=10)
    print(f"Output text: {token_ids_to_text(token_ids, tokenizer)!r}")

    print("\n=== 5.1.2 Calculating the text generation loss ===")
    inputs = np.array([[16833, 3626, 6100],     # ["every effort moves",
                       [40, 1107, 588]])        #  "I really like"]
    targets = np.array([[3626, 6100, 345],      # [" effort moves you",
                        [1107, 588, 11311]])    #  " really like chocolate"]
    print(f"inputs:  {[tokenizer.decode(r) for r in inputs.tolist()]}")
    print(f"targets: {[tokenizer.decode(r) for r in targets.tolist()]}")
    logits = model(inputs)                                  # (2, 3, 50257)
    probas = softmax(logits)
    print(f"probas.shape: {probas.shape}")
    token_ids = np.argmax(probas, axis=-1)
    print(f"Targets batch 1: {tokenizer.decode(targets[0].tolist())!r}")
    print(f"Outputs batch 1: {tokenizer.decode(token_ids[0].tolist())!r}")
    target_probas_1 = probas[0, np.arange(3), targets[0]]
    target_probas_2 = probas[1, np.arange(3), targets[1]]
    print(f"Text 1: {np.array2string(target_probas_1, formatter={'float': '{:.4e}'.format})}")
    print(f"Text 2: {np.array2string(target_probas_2, formatter={'float': '{:.4e}'.format})}")
    log_probas = np.log(np.concatenate((target_probas_1, target_probas_2)))
    print(f"log probabilities: {log_probas}")
    avg_log_probas = log_probas.mean()
    print(f"average log probability: {avg_log_probas:.4f}")
    print(f"negative average log probability = cross entropy: {-avg_log_probas:.4f}")
    loss = model.loss(inputs, targets)                      # the same number, from our cross_entropy op
    print(f"model.loss (scratchgpt's cross_entropy op): {loss:.4f}")
    print(f"perplexity exp(loss): {math.exp(loss):.1f}")
    print(f"untrained model loss {loss:.4f} vs ln(vocab_size) = ln(50257) = {math.log(50257):.4f}: with "
          "near-zero random weights\n  every token is about equally likely, so the loss is ln(V) and the "
          "perplexity about V, the number of tokens to choose from")


# ---- 5.1.3 Calculating the training and validation set losses ---------------------------------------
def calc_loss_batch(input_batch, target_batch, model):
    return model.loss(input_batch, target_batch)             # forward + mean cross-entropy


def calc_loss_loader(data_loader, model, num_batches=None):
    total_loss = 0.0
    if len(data_loader) == 0:
        return float("nan")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        total_loss += calc_loss_batch(input_batch, target_batch, model)
    return total_loss / num_batches


def train_val_losses(text_data, source, cfg):
    print("\n=== 5.1.3 Calculating the training and validation set losses ===")
    tokenizer = CharTokenizer.from_text(text_data)
    token_ids = tokenizer.encode(text_data)
    print(f"text: {source}")
    print(f"Characters: {len(text_data)}")
    print(f"Tokens: {len(token_ids)}  (one per character; vocabulary of {tokenizer.vocab_size})")
    train_ratio = 0.90
    split_idx = int(train_ratio * len(token_ids))
    train_data, val_data = token_ids[:split_idx], token_ids[split_idx:]
    ctx = cfg["context_length"]
    train_loader = create_dataloader_v1(train_data, batch_size=8, max_length=ctx, stride=ctx,
                                        drop_last=True, shuffle=True, seed=0)
    val_loader = create_dataloader_v1(val_data, batch_size=8, max_length=ctx, stride=ctx,
                                      drop_last=False, shuffle=False)
    print(f"{len(train_loader)} training batches, {len(val_loader)} validation batches of 8 x {ctx} tokens")
    x, y = next(iter(train_loader))
    print(f"first training batch: {x.shape} {y.shape}")

    cfg = dict(cfg, vocab_size=tokenizer.vocab_size)
    model = GPTModel(cfg, seed=123)
    print(f"model: {cfg}, {model.num_parameters():,} parameters")
    model.eval()                                             # no dropout when measuring
    train_loss = calc_loss_loader(train_loader, model)
    val_loss = calc_loss_loader(val_loader, model)
    model.train()
    print(f"Training loss: {train_loss:.4f}")
    print(f"Validation loss: {val_loss:.4f}")
    print(f"untrained model loss {train_loss:.4f} vs ln(vocab_size) = ln({tokenizer.vocab_size}) = "
          f"{math.log(tokenizer.vocab_size):.4f}")
    return model, tokenizer, train_loader, val_loader


# ---- 5.2 Training an LLM ----------------------------------------------------------------------
def evaluate_model(model, train_loader, val_loader, eval_iter):
    model.eval()
    train_loss = calc_loss_loader(train_loader, model, num_batches=eval_iter)
    val_loss = calc_loss_loader(val_loader, model, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def generate_and_print_sample(model, tokenizer, start_context, max_new_tokens=60):
    encoded = text_to_token_ids(start_context, tokenizer)
    token_ids = generate(model, encoded, max_new_tokens=max_new_tokens)      # greedy
    decoded_text = token_ids_to_text(token_ids, tokenizer)
    print(repr(decoded_text))


def train_model_simple(model, train_loader, val_loader, optimizer, num_epochs,
                       eval_freq, eval_iter, start_context, tokenizer):
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1
    for epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()                           # gradients accumulate: clear them
            loss = calc_loss_batch(input_batch, target_batch, model)
            model.backward()                                # d loss / d every parameter
            optimizer.step()
            tokens_seen += input_batch.size
            global_step += 1
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                print(f"Ep {epoch + 1} (Step {global_step:06d}): "
                      f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
        generate_and_print_sample(model, tokenizer, start_context)
    return train_losses, val_losses, track_tokens_seen


def plot_losses(epochs_seen, tokens_seen, train_losses, val_losses, path):
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    ax1.plot(epochs_seen, train_losses, label="Training loss")
    ax1.plot(epochs_seen, val_losses, linestyle="-.", label="Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    ax1.legend(loc="upper right")
    ax2 = ax1.twiny()                         # a second x-axis for tokens seen
    ax2.plot(tokens_seen, train_losses, alpha=0)
    ax2.set_xlabel("Tokens seen")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"saved {path}")


def training(model, tokenizer, train_loader, val_loader, num_epochs, start_context, out):
    print("\n=== 5.2 Training an LLM ===")
    t0 = time.time()
    optimizer = AdamW(model, lr=2e-3, weight_decay=0.1)
    train_losses, val_losses, tokens_seen = train_model_simple(
        model, train_loader, val_loader, optimizer, num_epochs=num_epochs, eval_freq=10,
        eval_iter=4, start_context=start_context, tokenizer=tokenizer)
    elapsed = time.time() - t0
    print(f"Training completed in {elapsed:.1f} s ({tokens_seen[-1] / elapsed:,.0f} tokens/s incl. evaluation)")
    print(f"loss fell from {train_losses[0]:.3f} to {train_losses[-1]:.3f} (train), "
          f"{val_losses[0]:.3f} to {min(val_losses):.3f} at best (validation)")
    if val_losses[-1] > min(val_losses) + 0.02:
        print(f"the validation loss has turned up from its best ({min(val_losses):.3f}) while the training loss\n"
              "keeps falling: the model is starting to memorise its short training text (overfitting; the\n"
              "book sees the same on The Verdict, more strongly, with its 124M-parameter model)")
    epochs_tensor = np.linspace(0, num_epochs, len(train_losses))
    plot_losses(epochs_tensor, tokens_seen, train_losses, val_losses, out / "loss.png")
    return optimizer


# ---- 5.3 Decoding strategies to control randomness ---------------------------------------------
vocab = {"closer": 0, "every": 1, "effort": 2, "forward": 3, "inches": 4,
         "moves": 5, "pizza": 6, "toward": 7, "you": 8}
inverse_vocab = {v: k for k, v in vocab.items()}
next_token_logits = np.array([4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79])


def print_sampled_tokens(probas, rng, n=1_000):
    sample = np.array([rng.choice(len(probas), p=probas) for _ in range(n)])   # torch.multinomial
    sampled_ids = np.bincount(sample, minlength=len(probas))
    for i, freq in enumerate(sampled_ids):
        print(f"{freq} x {inverse_vocab[i]}")
    return sampled_ids


def softmax_with_temperature(logits, temperature):
    return softmax(logits / temperature)


def temperature_and_top_k(out):
    print("\n=== 5.3.1 Temperature scaling ===")
    probas = softmax(next_token_logits)
    next_token_id = int(np.argmax(probas))
    print(f"greedy (argmax): {inverse_vocab[next_token_id]}")
    rng = np.random.default_rng(123)
    next_token_id = rng.choice(len(probas), p=probas)
    print(f"one draw: {inverse_vocab[int(next_token_id)]}")
    print("1,000 draws at temperature 1:")
    print_sampled_tokens(probas, rng)

    temperatures = [1, 0.1, 5]       # original, lower (sharper) and higher (flatter) confidence
    scaled_probas = [softmax_with_temperature(next_token_logits, T) for T in temperatures]
    for T, p in zip(temperatures, scaled_probas):
        # scratchgpt.generate.sample_next: the sampler `generate` uses, 1,000 rows in one call
        draws = sample_next(np.tile(next_token_logits, (1000, 1)), temperature=T, rng=rng)
        counts = np.bincount(draws, minlength=len(vocab))
        print(f"temperature {T}: probabilities {p}")
        print(f"temperature {T}: 1,000 draws: " + ", ".join(f"{c} x {inverse_vocab[i]}"
                                                           for i, c in enumerate(counts) if c))
        print(f"temperature {T}: 'forward' drawn {counts[vocab['forward']]}/1000 times, "
              f"{int((counts > 0).sum())} distinct words")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(vocab))
    bar_width = 0.15
    for i, T in enumerate(temperatures):
        ax.bar(x + i * bar_width, scaled_probas[i], bar_width, label=f"Temperature = {T}")
    ax.set_ylabel("Probability")
    ax.set_xticks(x + bar_width, vocab.keys(), rotation=90)
    ax.legend()
    fig.tight_layout()
    path = out / "temperature.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"saved {path}")

    print("\n=== 5.3.2 Top-k sampling ===")
    top_k = 3
    top_pos = np.argsort(next_token_logits)[::-1][:top_k]
    top_logits = next_token_logits[top_pos]
    print(f"Top logits: {top_logits}")
    print(f"Top positions: {top_pos}")
    new_logits = np.where(next_token_logits < top_logits[-1], -np.inf, next_token_logits)
    print(f"masked logits: {new_logits}")
    topk_probas = softmax(new_logits)
    print(f"top-k probabilities: {topk_probas}")


def sampling_from_trained(model, tokenizer, start_context):
    print("\n=== 5.3.3 Modifying the text generation function ===")
    # scratchgpt.generate.generate is the book's generate(): temperature, top_k (and top_p), eos_id,
    # cropping to the context length; it adds a KV cache. Greedy when temperature == 0.
    rng = np.random.default_rng(123)
    for temperature, top_k in ((0.0, None), (1.4, 25), (0.8, 10)):
        token_ids = generate(model, text_to_token_ids(start_context, tokenizer), max_new_tokens=60,
                             temperature=temperature, top_k=top_k, rng=rng)
        print(f"temperature {temperature}, top_k {top_k}: {token_ids_to_text(token_ids, tokenizer)!r}")


# ---- 5.4 Loading and saving model weights ---------------------------------------------------------
def save_and_load(model, tokenizer, optimizer, out):
    print("\n=== 5.4 Loading and saving model weights in PyTorch (here: NumPy, no pickle) ===")
    path = out / "model_and_optimizer.npz"
    checkpoint.save(path, model, tokenizer=tokenizer, optimizer=optimizer)
    print(f"saved {path} ({path.stat().st_size / 1024:.0f} KiB: weights, AdamW moments, config, tokenizer)")
    ck = checkpoint.load(path)
    model2, tokenizer2 = ck.model, ck.tokenizer
    optimizer2 = AdamW(model2, lr=2e-3, weight_decay=0.1)
    optimizer2.load_state_dict(ck.optimizer_state)         # to continue training where it stopped
    x = text_to_token_ids("All the world", tokenizer2)
    model.eval()
    model2.eval()
    same = np.array_equal(model(x), model2(x))
    print(f"loaded model gives identical logits: {same}; tokenizer: {tokenizer2}")
    print(f"logits at the last position of 'All the world', first 5: {model(x)[0, -1, :5].tolist()}")


# ---- 5.5 Loading pretrained weights from OpenAI ---------------------------------------------------
def load_pretrained(gpt2_dir, text_data):
    print("\n=== 5.5 Loading pretrained weights from OpenAI ===")
    if not gpt2_dir:
        print("skipped: pass --gpt2-dir PATH (a Hugging Face GPT-2 folder with config.json and "
              "model.safetensors, e.g. from huggingface.co/openai-community/gpt2)")
        return
    from scratchgpt.gpt2 import load_gpt2
    t0 = time.time()
    gpt = load_gpt2(gpt2_dir)
    c = gpt.cfg
    print(f"loaded {gpt2_dir}: {c.n_layers} layers, emb_dim {c.emb_dim}, {c.n_heads} heads, context "
          f"{c.context_length}, {gpt.num_parameters():,} parameters ({time.time() - t0:.1f} s)")
    tokenizer = BPETokenizer.gpt2()
    ids = np.array(tokenizer.encode(text_data, disallowed_special=()))
    T = min(gpt.cfg.context_length, 256)
    n = min(4, (len(ids) - 1) // T)
    if n:
        x = np.stack([ids[i * T:i * T + T] for i in range(n)])
        y = np.stack([ids[i * T + 1:i * T + T + 1] for i in range(n)])
        gpt.eval()
        loss = gpt.loss(x, y)
        print(f"GPT-2's loss on {n * T} tokens of our text: {loss:.3f} (perplexity {math.exp(loss):.1f}); "
              f"an untrained model: ln(50257) = {math.log(50257):.3f}")
    rng = np.random.default_rng(123)
    token_ids = generate(gpt, text_to_token_ids("Every effort moves you", tokenizer), max_new_tokens=25,
                         temperature=1.5, top_k=50, rng=rng)
    print(f"Output text:\n{token_ids_to_text(token_ids, tokenizer)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--text-file", help="a UTF-8 text to train on (e.g. the book's the-verdict.txt)")
    parser.add_argument("--gpt2-dir", help="a GPT-2 folder (config.json + model.safetensors) for 5.5")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 15; 2 with --smoke)")
    parser.add_argument("--out", default="out/ch05_pretraining", help="folder for plots and the checkpoint")
    parser.add_argument("--smoke", action="store_true", help="less text, a smaller model (for the tests)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    text_data, source = read_text(args.text_file, n_chars=5_000 if args.smoke else 20_000)
    cfg = dict(GPT_CONFIG_SMALL)
    if args.smoke:
        cfg.update(emb_dim=32, n_heads=2, n_layers=1, context_length=32)
    num_epochs = args.epochs or (2 if args.smoke else 15)

    text_generation_loss()
    model, tokenizer, train_loader, val_loader = train_val_losses(text_data, source, cfg)
    start_context = next(s for s in ("Every effort moves you", "All the world", text_data[:13])
                         if set(s) <= set(tokenizer.stoi))
    optimizer = training(model, tokenizer, train_loader, val_loader, num_epochs, start_context, out)
    temperature_and_top_k(out)
    sampling_from_trained(model, tokenizer, start_context)
    save_and_load(model, tokenizer, optimizer, out)
    load_pretrained(args.gpt2_dir, text_data)
    print(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
