"""Chapter 4 of "Build a Large Language Model (From Scratch)": implementing a GPT model.

The book's GPT_CONFIG_124M and GPTModel, built from scratchgpt's classes; LayerNorm, GELU,
the feed-forward block, shortcut connections and the transformer block on their own; the
parameter count with and without weight tying; greedy generation from the untrained model.
Every gradient here comes from scratchgpt's hand-written backward passes.

    python examples/ch04_gpt_model.py                  # plots to out/ch04_gpt_model/
    python examples/ch04_gpt_model.py --smoke --out /tmp/ch04

--smoke builds a 2-layer, 64-wide stand-in instead of the 124M-parameter model (the parameter
counts are still those of the 124M configuration: they come from the parameter shapes).
Random numbers come from NumPy (seeded), so they differ from the book's torch.manual_seed(123).
"""
import argparse
import math
import time
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from scratchgpt import GPTConfig, GPTModel  # noqa: E402
from scratchgpt.analysis.gradcam import backward_blocks, forward_blocks  # noqa: E402
from scratchgpt.generate import generate  # noqa: E402
from scratchgpt.model import parameter_shapes  # noqa: E402
from scratchgpt.ops import (cross_entropy_backward, cross_entropy_forward, gelu_backward, gelu_forward,  # noqa: E402
                            layernorm_forward,
                            linear_backward, linear_forward, softmax_forward)
from scratchgpt.tokenizer import BPETokenizer  # noqa: E402

np.set_printoptions(precision=4, suppress=True)

GPT_CONFIG_124M = {
    "vocab_size": 50257,     # Vocabulary size
    "context_length": 1024,  # Context length
    "emb_dim": 768,          # Embedding dimension
    "n_heads": 12,           # Number of attention heads
    "n_layers": 12,          # Number of layers
    "drop_rate": 0.1,        # Dropout rate
    "qkv_bias": False,       # Query-Key-Value bias
}


def count(shapes):
    return sum(math.prod(s) for s in shapes.values())


# ---- 4.1 Coding an LLM architecture -----------------------------------------------------------
def llm_architecture(cfg, tokenizer):
    print("=== 4.1 Coding an LLM architecture ===")
    batch = np.array([tokenizer.encode(txt) for txt in ("Every effort moves you", "Every day holds a")])
    print(f"token ids:\n{batch}")
    model = GPTModel(cfg, seed=123)           # GPT-2's init: N(0, 0.02) weights, zero biases
    logits = model(batch)
    print(f"Output shape: {logits.shape}")
    print(logits[0, :2, :6], "...")
    return model, batch


# ---- 4.2 Normalizing activations with layer normalization ---------------------------------------------
def layer_normalization():
    print("\n=== 4.2 Normalizing activations with layer normalization ===")
    rng = np.random.default_rng(123)
    batch_example = rng.standard_normal((2, 5)).astype(np.float32)     # 2 examples, 5 features
    bound = 1 / math.sqrt(5)                                           # nn.Linear(5, 6) init range
    w = rng.uniform(-bound, bound, (5, 6)).astype(np.float32)
    b = rng.uniform(-bound, bound, 6).astype(np.float32)
    out = np.maximum(linear_forward(batch_example, w, b)[0], 0.0)      # Linear(5, 6) then ReLU
    print(f"layer outputs:\n{out}")
    mean = out.mean(axis=-1, keepdims=True)    # keepdims: (2, 1), not (2,), so it broadcasts per row
    var = out.var(axis=-1, keepdims=True)
    print(f"Mean:\n{mean}\nVariance:\n{var}")
    out_norm = (out - mean) / np.sqrt(var)
    print(f"Normalized layer outputs:\n{out_norm}")
    print(f"Mean:\n{out_norm.mean(axis=-1, keepdims=True)}\nVariance:\n{out_norm.var(axis=-1, keepdims=True)}")

    # scratchgpt's LayerNorm op (the model's LayerNorm class calls it): scale = weight, shift = bias
    emb_dim = 5
    scale, shift = np.ones(emb_dim, np.float32), np.zeros(emb_dim, np.float32)
    out_ln, _ = layernorm_forward(batch_example, scale, shift)
    mean = out_ln.mean(axis=-1)
    n = out_ln.shape[-1]
    var_biased = out_ln.var(axis=-1)              # divide by n     (torch: unbiased=False)
    var_unbiased = out_ln.var(axis=-1, ddof=1)    # divide by n - 1 (Bessel's correction)
    print(f"LayerNorm output:\n{out_ln}")
    print(f"layernorm mean per row: {mean}  (max |mean| = {np.abs(mean).max():.1e})")
    print(f"layernorm variance per row, biased (divide by n = {n}): {var_biased}")
    print(f"layernorm variance per row, unbiased (divide by n - 1 = {n - 1}): {var_unbiased}"
          f"  = biased * {n}/{n - 1}")
    print("LayerNorm normalises with the biased variance, as GPT-2 did; with 768 features the two differ\n"
          f"by a factor 768/767 = {768 / 767:.5f}, so the choice only matters for pretrained-weight compatibility.")
    print(f"layernorm check: max |mean| = {np.abs(mean).max():.2e}, "
          f"biased variance in [{var_biased.min():.4f}, {var_biased.max():.4f}]")


# ---- 4.3 Implementing a feed forward network with GELU activations --------------------------------------
def gelu_and_feed_forward(model, out):
    print("\n=== 4.3 Implementing a feed forward network with GELU activations ===")
    x = np.linspace(-3, 3, 100, dtype=np.float32)
    y_gelu, cache = gelu_forward(x)
    dy_gelu = gelu_backward(np.ones_like(x), cache)         # dGELU/dx from our backward
    y_relu, dy_relu = np.maximum(x, 0), (x > 0).astype(np.float32)
    i = int(np.argmin(y_gelu))
    print(f"GELU's minimum on [-3, 3]: {y_gelu[i]:.4f} at x = {x[i]:.2f}; "
          f"GELU'(-1) = {float(gelu_backward(np.ones(1, np.float32), np.array([-1.0], np.float32))[0]):.4f} "
          f"where ReLU'(-1) = 0")

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, label, y, dy in zip(axes, ("GELU", "ReLU"), (y_gelu, y_relu), (dy_gelu, dy_relu)):
        ax.plot(x, y, label=label)
        ax.plot(x, dy, "--", label=f"d {label} / dx")
        ax.set_title(f"{label} activation function")
        ax.set_xlabel("x")
        ax.legend()
        ax.grid(True)
    fig.tight_layout()
    path = out / "gelu_relu.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"saved {path}")

    ffn = model.trf_blocks[0].ff                # GPT-2's mlp.c_fc and mlp.c_proj, layer 0
    C = model.cfg.emb_dim
    x = np.random.default_rng(0).random((2, 3, C), dtype=np.float32)
    P = model.state_dict()
    hidden, _ = linear_forward(x, P["transformer.h.0.mlp.c_fc.weight"], P["transformer.h.0.mlp.c_fc.bias"])
    print(f"feed forward: input {x.shape} -> expand {hidden.shape} -> GELU -> "
          f"contract {ffn.forward(x).shape}")


# ---- 4.4 Adding shortcut connections --------------------------------------------------------------
class ExampleDeepNeuralNetwork:
    """The book's five-layer toy network, with our linear and GELU forward/backward ops."""

    def __init__(self, layer_sizes, use_shortcut, seed=123):
        rng = np.random.default_rng(seed)
        self.use_shortcut = use_shortcut
        self.layers = []
        for d_in, d_out in zip(layer_sizes[:-1], layer_sizes[1:]):
            bound = 1 / math.sqrt(d_in)                       # nn.Linear's default init range
            self.layers.append({"weight": rng.uniform(-bound, bound, (d_in, d_out)).astype(np.float32),
                                "bias": rng.uniform(-bound, bound, d_out).astype(np.float32)})

    def forward(self, x):
        self.caches = []
        for layer in self.layers:
            h, lin_cache = linear_forward(x, layer["weight"], layer["bias"])
            layer_output, gelu_cache = gelu_forward(h)
            shortcut = self.use_shortcut and x.shape == layer_output.shape
            self.caches.append((lin_cache, gelu_cache, shortcut))
            x = x + layer_output if shortcut else layer_output
        return x

    def backward(self, dout):
        # y = x + f(x) gives dx = dout + f'(x)^T dout: the shortcut hands dout down unchanged
        for layer, (lin_cache, gelu_cache, shortcut) in zip(reversed(self.layers), reversed(self.caches)):
            dh = gelu_backward(dout, gelu_cache)
            dx, layer["weight_grad"], layer["bias_grad"] = linear_backward(dh, lin_cache)
            dout = dout + dx if shortcut else dx
        return dout


def print_gradients(model, x):
    output = model.forward(x)
    target = np.array([[0.0]], dtype=np.float32)
    loss = ((output - target) ** 2).mean()                    # MSE
    model.backward(2 * (output - target) / output.size)       # d MSE / d output
    means = []
    for i, layer in enumerate(model.layers):
        means.append(float(np.abs(layer["weight_grad"]).mean()))
        print(f"layers.{i}.0.weight has gradient mean of {means[-1]}")
    return loss, means


def shortcut_connections(out):
    print("\n=== 4.4 Adding shortcut connections ===")
    layer_sizes = [3, 3, 3, 3, 3, 1]
    sample_input = np.array([[1.0, 0.0, -1.0]], dtype=np.float32)
    print("without shortcut connections:")
    _, without = print_gradients(ExampleDeepNeuralNetwork(layer_sizes, use_shortcut=False), sample_input)
    print("with shortcut connections:")
    _, with_ = print_gradients(ExampleDeepNeuralNetwork(layer_sizes, use_shortcut=True), sample_input)
    for i, (a, b) in enumerate(zip(with_, without)):
        print(f"shortcut gradient ratio at layer {i}: {a / b:.1f}x")
    print(f"without shortcuts the gradient shrinks {without[-1] / without[0]:.0f}x from the last layer "
          f"to the first (vanishing gradients); with them, {with_[-1] / with_[0]:.0f}x")
    ratios = []                                 # one input and one init is a noisy experiment:
    for seed in range(50):                      # the same comparison over 50 initialisations
        nets = [ExampleDeepNeuralNetwork(layer_sizes, use_shortcut=s, seed=seed) for s in (False, True)]
        grads = []
        for net in nets:
            output = net.forward(sample_input)
            net.backward(2 * output / output.size)
            grads.append(float(np.abs(net.layers[0]["weight_grad"]).mean()))
        ratios.append(grads[1] / grads[0])
    print(f"over 50 random initialisations the layer-0 ratio has median {np.median(ratios):.0f}x "
          f"(it is above 10x in {sum(r > 10 for r in ratios)} of 50)")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    layers = np.arange(len(layer_sizes) - 1)
    ax.bar(layers - 0.2, without, 0.4, label="without shortcuts")
    ax.bar(layers + 0.2, with_, 0.4, label="with shortcuts")
    ax.set_yscale("log")
    ax.set_xlabel("layer (0 = nearest the input)")
    ax.set_ylabel("mean |d loss / d weight|")
    ax.set_title("4.4 gradients in the five-layer toy network")
    ax.legend()
    fig.tight_layout()
    path = out / "shortcut_gradients.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"saved {path}")


# ---- 4.5 Connecting attention and linear layers in a transformer block -----------------------------------
def transformer_block(model):
    print("\n=== 4.5 Connecting attention and linear layers in a transformer block ===")
    block = model.trf_blocks[0]                 # ln_1 -> attention -> shortcut; ln_2 -> feed forward -> shortcut
    x = np.random.default_rng(0).random((2, 4, model.cfg.emb_dim), dtype=np.float32)
    output = block.forward(x)
    print(f"Input shape: {x.shape}")
    print(f"Output shape: {output.shape}")
    dx = block.backward(np.ones_like(output))
    print(f"... and the backward hands back a gradient of the same shape: {dx.shape}")


def pre_vs_post_layernorm(out, smoke):
    """Beyond the book: gradients per layer at initialisation, LayerNorm before vs. after the add."""
    print("\n=== Beyond the book: pre-LayerNorm (GPT-2, the book) vs post-LayerNorm (2017 Transformer) ===")
    n_layers = 6 if smoke else 12
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 96, (4, 64))
    targets = rng.integers(0, 96, (4, 64))
    param_norms, stream_norms = {}, {}
    for post_norm in (False, True):
        cfg = GPTConfig(vocab_size=96, context_length=64, emb_dim=128, n_heads=4, n_layers=n_layers,
                        post_norm=post_norm)
        model = GPTModel(cfg, seed=0)           # the same weights for both: only the order differs
        # forward_blocks / backward_blocks: the model's forward and backward, block by block,
        # keeping the gradient in the residual stream at each block's output
        logits, _ = forward_blocks(model, idx)
        loss, cache = cross_entropy_forward(logits, targets)
        stream = backward_blocks(model, cross_entropy_backward(1.0, cache))
        grads = model.grads()
        param_norms[post_norm] = [math.sqrt(sum(float((g * g).sum()) for k, g in grads.items()
                                                if k.startswith(f"transformer.h.{i}.")))
                                  for i in range(n_layers)]
        stream_norms[post_norm] = [float(np.linalg.norm(g)) for g in stream[1:]]   # d loss / d (output of block i)
    for name, post in (("pre-LN ", False), ("post-LN", True)):
        p, a = param_norms[post], stream_norms[post]
        print(f"{name} parameter gradient norm per layer: {' '.join(f'{v:.3f}' for v in p)}")
        print(f"{name} residual-stream gradient per layer: {' '.join(f'{v:.4f}' for v in a)}"
              f"   layer 0 / last layer = {a[0] / a[-1]:.2f}")
    print("""pre-LN: y = x + f(ln(x)) gives dx = dy + (branch), so walking down the stack every block *adds*
  its branch to the gradient arriving through the shortcut: the gradient grows a little towards the
  input and nothing can vanish. The stream itself stays small at GPT-2's init (std ~0.02-0.03), and
  the final ln_f divides by that small std, which is why pre-LN's gradients are the larger ones here.
post-LN: y = ln(x + f(x)) puts a LayerNorm on the gradient's only path; at this init each one leaves
  the gradient's size almost unchanged (x + f(x) has std ~1), so it is flat across depth, except that
  block 0's ln_1 divides by the tiny raw embeddings and so scales up the gradient below it.
  Post-LN's known trouble (Xiong et al., 2020: badly scaled gradients across layers at the start of
  training, hence the learning-rate warmup it needs) depends on the init and does not show at this
  small one; pre-LN's identity path from the loss to every layer holds at any init, which is why
  GPT-2 and the book put the LayerNorm in front of each sublayer.""")

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for post, label in ((False, "pre-LN (GPT-2, the book)"), (True, "post-LN (2017 Transformer)")):
        axes[0].plot(range(n_layers), param_norms[post], "o-", label=label)
        axes[1].plot(range(n_layers), stream_norms[post], "o-", label=label)
    axes[0].set_ylabel("norm of d loss / d (block's parameters)")
    axes[1].set_ylabel("norm of d loss / d (block's output)")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("layer (0 = nearest the input)")
        ax.legend()
    fig.suptitle(f"gradients at initialisation ({n_layers} layers, emb 128, GPT-2 init)")
    fig.tight_layout()
    path = out / "pre_vs_post_layernorm.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"saved {path}")


# ---- 4.6 Coding the GPT model ------------------------------------------------------------------
def gpt_model_size(model):
    print("\n=== 4.6 Coding the GPT model ===")
    tied = parameter_shapes(GPTConfig(**GPT_CONFIG_124M))                       # head = transformer.wte
    untied = parameter_shapes(GPTConfig(**GPT_CONFIG_124M, tie_weights=False))  # + lm_head.weight
    total_params, untied_params = count(tied), count(untied)
    if model.cfg == GPTConfig(**GPT_CONFIG_124M):
        assert model.num_parameters() == total_params
    print(f"Token embedding layer shape: {untied['transformer.wte.weight']}")
    print(f"Output layer shape: {untied['lm_head.weight']}")
    print(f"Total number of parameters (untied, the book's GPTModel): {untied_params:,}")
    print(f"Total number of parameters (tied, GPT-2 and scratchgpt's default): {total_params:,}")
    print(f"  difference = the output layer: 50257 x 768 = {50257 * 768:,}; with weight tying the\n"
          "  output layer reuses the token embedding matrix (transposed), so it is counted once.")
    print(f"  with qkv_bias=True (the released GPT-2 checkpoints): "
          f"{count(parameter_shapes(GPTConfig(**dict(GPT_CONFIG_124M, qkv_bias=True)))):,}")
    for name, n in (("untied", untied_params), ("tied", total_params)):
        print(f"Total size of the model ({name}, float32 = 4 bytes per parameter): {n * 4 / (1024 * 1024):.2f} MB")

    ff = sum(math.prod(s) for k, s in tied.items() if k.startswith("transformer.h.0.mlp."))
    att = sum(math.prod(s) for k, s in tied.items() if k.startswith("transformer.h.0.attn."))
    print(f"exercise 4.1: per block, feed forward {ff:,} parameters, attention {att:,}")
    for name, (emb, layers, heads) in {"gpt2-medium": (1024, 24, 16), "gpt2-large": (1280, 36, 20),
                                       "gpt2-xl": (1600, 48, 25)}.items():
        cfg = GPTConfig(**dict(GPT_CONFIG_124M, emb_dim=emb, n_layers=layers, n_heads=heads), tie_weights=False)
        n = count(parameter_shapes(cfg))
        print(f"exercise 4.2: {name}: {n:,} parameters (untied), {n * 4 / 1024 ** 2:.2f} MB")


# ---- 4.7 Generating text ------------------------------------------------------------------------
def generate_text_simple(model, idx, max_new_tokens, context_size):
    """The book's greedy loop: run the model, take the last position's most likely token, append."""
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]          # crop to the supported context
        logits = model(idx_cond)                   # (batch, n_tokens, vocab_size)
        logits = logits[:, -1, :]                  # the last time step: (batch, vocab_size)
        probas, _ = softmax_forward(logits)        # (not needed for argmax, but as in the book)
        idx_next = np.argmax(probas, axis=-1, keepdims=True)   # (batch, 1)
        idx = np.concatenate((idx, idx_next), axis=1)           # (batch, n_tokens + 1)
    return idx


def generating_text(model, tokenizer):
    print("\n=== 4.7 Generating text ===")
    start_context = "Hello, I am"
    encoded = tokenizer.encode(start_context)
    print(f"encoded: {encoded}")
    encoded_tensor = np.array(encoded)[None, :]               # add the batch dimension
    print(f"encoded_tensor.shape: {encoded_tensor.shape}")
    model.eval()                                              # dropout off
    out = generate_text_simple(model, encoded_tensor, max_new_tokens=6,
                               context_size=model.cfg.context_length)
    print(f"Output: {out}")
    print(f"Output length: {out.shape[1]}")
    print(f"decoded: {tokenizer.decode(out[0].tolist())!r}   (untrained: gibberish)")
    fast = generate(model, encoded_tensor, max_new_tokens=6)  # scratchgpt.generate: greedy + KV cache
    print(f"scratchgpt.generate.generate (KV cache): {fast}")
    print(f"scratchgpt.generate.generate (KV cache) gives the same ids: {bool((fast == out).all())}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/ch04_gpt_model", help="folder for the plots")
    parser.add_argument("--smoke", action="store_true", help="a small stand-in model (for the tests)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    cfg = dict(GPT_CONFIG_124M)
    if args.smoke:
        cfg.update(emb_dim=64, n_heads=4, n_layers=2)
        print(f"(--smoke: a stand-in model {cfg})")
    tokenizer = BPETokenizer.gpt2()
    model, _ = llm_architecture(cfg, tokenizer)
    layer_normalization()
    gelu_and_feed_forward(model, out)
    shortcut_connections(out)
    transformer_block(model)
    pre_vs_post_layernorm(out, args.smoke)
    gpt_model_size(model)
    generating_text(model, tokenizer)
    print(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
