"""Chapter 3 of "Build a Large Language Model (From Scratch)": coding attention mechanisms.

The book's six-token sentence "Your journey starts with one step" with its 3-d embeddings,
from simple dot-product attention to causal multi-head attention, computed with NumPy and
scratchgpt's ops (linear, softmax, causal softmax, dropout, multi-head attention). Beyond
the book: scratchgpt's hand-written attention backward checked against finite differences.

    python examples/ch03_attention.py                  # plots to out/ch03_attention/
    python examples/ch03_attention.py --smoke --out /tmp/ch03

Where the book draws random weights with torch.manual_seed(123) we draw them with NumPy's
default_rng(123), so those numbers differ from the book's; the numbers that need no random
weights (sections 3.3.1 and 3.3.2) are the book's exactly.
"""
import argparse
import math
import time
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from scratchgpt.ops import (causal_softmax_forward, dropout_forward, linear_forward,  # noqa: E402
                            multihead_attention_backward, multihead_attention_forward,
                            softmax_forward)

np.set_printoptions(precision=4, suppress=True)

WORDS = ["Your", "journey", "starts", "with", "one", "step"]
inputs = np.array(
    [[0.43, 0.15, 0.89],   # Your     (x^1)
     [0.55, 0.87, 0.66],   # journey  (x^2)
     [0.57, 0.85, 0.64],   # starts   (x^3)
     [0.22, 0.58, 0.33],   # with     (x^4)
     [0.77, 0.25, 0.10],   # one      (x^5)
     [0.05, 0.80, 0.55]],  # step     (x^6)
    dtype=np.float32)


def softmax(x):
    return softmax_forward(x)[0]        # our op returns (output, cache); the cache is for backward


# ---- 3.3.1 A simple self-attention mechanism without trainable weights ---------------------------
def simple_attention_one_query():
    print("=== 3.3.1 A simple self-attention mechanism without trainable weights ===")
    query = inputs[1]                                   # 2nd input token is the query
    attn_scores_2 = np.array([np.dot(x_i, query) for x_i in inputs])
    print(f"attention scores (query 'journey'): {attn_scores_2}")
    attn_weights_2_tmp = attn_scores_2 / attn_scores_2.sum()
    print(f"Attention weights (divided by the sum): {attn_weights_2_tmp}  Sum: {attn_weights_2_tmp.sum():.4f}")
    attn_weights_2_naive = np.exp(attn_scores_2) / np.exp(attn_scores_2).sum()
    print(f"Attention weights (naive softmax): {attn_weights_2_naive}  Sum: {attn_weights_2_naive.sum():.4f}")
    attn_weights_2 = softmax(attn_scores_2)             # subtracts the max first: no overflow
    print(f"Attention weights (scratchgpt softmax): {attn_weights_2}  Sum: {attn_weights_2.sum():.4f}")
    context_vec_2 = np.zeros(query.shape)
    for i, x_i in enumerate(inputs):
        context_vec_2 += attn_weights_2[i] * x_i
    print(f"context vector z^2: {context_vec_2}")
    return context_vec_2


# ---- 3.3.2 Computing attention weights for all input tokens ---------------------------------------
def simple_attention_all():
    print("\n=== 3.3.2 Computing attention weights for all input tokens ===")
    attn_scores = inputs @ inputs.T                      # (6, 3) @ (3, 6) -> (6, 6)
    print(f"attention scores:\n{attn_scores}")
    attn_weights = softmax(attn_scores)                  # each row sums to 1
    print(f"attention weights:\n{attn_weights}")
    print(f"All row sums: {attn_weights.sum(axis=-1)}")
    all_context_vecs = attn_weights @ inputs             # (6, 6) @ (6, 3) -> (6, 3)
    print(f"all context vectors:\n{all_context_vecs}")
    return attn_weights


# ---- 3.4 Implementing self-attention with trainable weights ----------------------------------------
def trainable_weights_one_query():
    print("\n=== 3.4.1 Computing the attention weights step by step ===")
    d_in, d_out = inputs.shape[1], 2
    rng = np.random.default_rng(123)
    W_query = rng.random((d_in, d_out), dtype=np.float32)    # torch.rand's U(0, 1), as in the book
    W_key = rng.random((d_in, d_out), dtype=np.float32)
    W_value = rng.random((d_in, d_out), dtype=np.float32)
    x_2 = inputs[1]
    query_2 = x_2 @ W_query
    print(f"query_2: {query_2}")
    keys = inputs @ W_key                                  # (6, 2)
    values = inputs @ W_value                              # (6, 2)
    print(f"keys.shape: {keys.shape}  values.shape: {values.shape}")
    attn_score_22 = query_2.dot(keys[1])
    print(f"attn_score_22: {attn_score_22:.4f}")
    attn_scores_2 = query_2 @ keys.T
    print(f"attn_scores_2: {attn_scores_2}")
    d_k = keys.shape[-1]
    attn_weights_2 = softmax(attn_scores_2 / d_k ** 0.5)  # scaled: large dot products -> tiny gradients
    print(f"attn_weights_2: {attn_weights_2}")
    context_vec_2 = attn_weights_2 @ values
    print(f"context_vec_2: {context_vec_2}")


class SelfAttention:
    """The book's SelfAttention_v2 with our linear op. Our weights are stored (d_in, d_out), as
    the book's SelfAttention_v1 stores them, so v1 and v2 are one class here: no transpose."""

    def __init__(self, d_in, d_out, rng, qkv_bias=False):
        bound = 1 / math.sqrt(d_in)                        # nn.Linear's default init range
        self.W_query = rng.uniform(-bound, bound, (d_in, d_out)).astype(np.float32)
        self.W_key = rng.uniform(-bound, bound, (d_in, d_out)).astype(np.float32)
        self.W_value = rng.uniform(-bound, bound, (d_in, d_out)).astype(np.float32)

    def scores(self, x):
        queries, _ = linear_forward(x, self.W_query)       # (..., T, d_out)
        keys, _ = linear_forward(x, self.W_key)
        return queries @ np.swapaxes(keys, -1, -2) / keys.shape[-1] ** 0.5   # (..., T, T)

    def forward(self, x):
        values, _ = linear_forward(x, self.W_value)
        return softmax(self.scores(x)) @ values


def self_attention_class(rng):
    print("\n=== 3.4.2 Implementing a compact self-attention Python class ===")
    sa = SelfAttention(d_in=3, d_out=2, rng=rng)
    print(f"context vectors:\n{sa.forward(inputs)}")
    return sa


# ---- 3.5 Hiding future words with causal attention --------------------------------------------------
def causal_attention_mask(sa):
    print("\n=== 3.5.1 Applying a causal attention mask ===")
    attn_scores = sa.scores(inputs)
    attn_weights = softmax(attn_scores)
    print(f"attention weights:\n{attn_weights}")
    context_length = attn_scores.shape[0]
    mask_simple = np.tril(np.ones((context_length, context_length), dtype=np.float32))
    masked_simple = attn_weights * mask_simple
    print(f"weights with the future zeroed:\n{masked_simple}")
    masked_simple_norm = masked_simple / masked_simple.sum(axis=-1, keepdims=True)
    print(f"... renormalised:\n{masked_simple_norm}")
    # the efficient way: -inf above the diagonal *before* the softmax (exp(-inf) = 0)
    mask = np.triu(np.ones((context_length, context_length), dtype=bool), k=1)
    masked = np.where(mask, -np.inf, attn_scores)
    print(f"scores with -inf above the diagonal:\n{masked}")
    attn_weights_causal = softmax(masked)
    print(f"causal attention weights:\n{attn_weights_causal}")
    ours, _ = causal_softmax_forward(attn_scores)        # the op the model uses does the same
    print(f"max |renormalised - (-inf mask)| = {np.abs(masked_simple_norm - attn_weights_causal).max():.2e}; "
          f"max |(-inf mask) - causal_softmax_forward| = {np.abs(ours - attn_weights_causal).max():.2e}")
    return attn_weights_causal


def dropout_demo(attn_weights_causal):
    print("\n=== 3.5.2 Masking additional attention weights with dropout ===")
    rng = np.random.default_rng(123)
    example = np.ones((6, 6), dtype=np.float32)
    dropped, _ = dropout_forward(example, 0.5, rng)       # kept entries are scaled by 1/(1-0.5) = 2
    print(f"dropout(0.5) of ones(6, 6):\n{dropped}")
    print(f"mean stays ~1 thanks to the rescaling: {dropped.mean():.3f}")
    dropped_weights, _ = dropout_forward(attn_weights_causal, 0.5, rng)
    print(f"dropout(0.5) of the causal attention weights:\n{dropped_weights}")
    return dropped_weights


class CausalAttention(SelfAttention):
    """Single-head causal attention with dropout on the attention weights (the book's CausalAttention)."""

    def __init__(self, d_in, d_out, context_length, dropout, rng):
        super().__init__(d_in, d_out, rng)
        self.dropout, self.rng = dropout, rng

    def forward(self, x):                                  # x: (b, num_tokens, d_in)
        values, _ = linear_forward(x, self.W_value)        # (b, T, d_out)
        attn_weights, _ = causal_softmax_forward(self.scores(x))     # (b, T, T)
        attn_weights, _ = dropout_forward(attn_weights, self.dropout, self.rng)
        return attn_weights @ values                       # (b, T, d_out)


def causal_attention_class(rng):
    print("\n=== 3.5.3 Implementing a compact causal attention class ===")
    batch = np.stack((inputs, inputs))                     # two inputs with six tokens each
    print(f"batch.shape: {batch.shape}")
    ca = CausalAttention(d_in=3, d_out=2, context_length=6, dropout=0.0, rng=rng)
    context_vecs = ca.forward(batch)
    print(f"context_vecs.shape: {context_vecs.shape}")
    return batch


# ---- 3.6 Extending single-head attention to multi-head attention ------------------------------------
class MultiHeadAttentionWrapper:
    def __init__(self, d_in, d_out, context_length, dropout, num_heads, rng):
        self.heads = [CausalAttention(d_in, d_out, context_length, dropout, rng) for _ in range(num_heads)]

    def forward(self, x):
        return np.concatenate([head.forward(x) for head in self.heads], axis=-1)


class MultiHeadAttention:
    """The book's MultiHeadAttention on scratchgpt's op. The book's three projections
    W_query, W_key, W_value (d_in, d_out) are one fused matrix here, c_attn (d_in, 3 d_out),
    so q, k and v come from one matrix multiply; out_proj is c_proj (d_out, d_out)."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, rng, qkv_bias=False):
        assert d_out % num_heads == 0, "d_out must be divisible by num_heads"
        self.num_heads, self.dropout, self.rng = num_heads, dropout, rng
        bound = 1 / math.sqrt(d_in)
        self.W_query, self.W_key, self.W_value = (
            rng.uniform(-bound, bound, (d_in, d_out)).astype(np.float32) for _ in range(3))
        self.c_attn_weight = np.concatenate([self.W_query, self.W_key, self.W_value], axis=1)
        self.c_attn_bias = np.zeros(3 * d_out, np.float32) if qkv_bias else None
        bound = 1 / math.sqrt(d_out)
        self.c_proj_weight = rng.uniform(-bound, bound, (d_out, d_out)).astype(np.float32)
        self.c_proj_bias = rng.uniform(-bound, bound, d_out).astype(np.float32)

    def forward(self, x):                                   # (b, T, d_in) -> (b, T, d_out)
        out, self.cache = multihead_attention_forward(
            x, self.c_attn_weight, self.c_attn_bias, self.c_proj_weight, self.c_proj_bias,
            self.num_heads, self.dropout, self.rng)
        return out

    def forward_book_style(self, x):
        """The book's forward line by line (separate projections, view/transpose into heads)."""
        b, num_tokens, _ = x.shape
        d_out = self.W_query.shape[1]
        head_dim = d_out // self.num_heads
        keys = (x @ self.W_key).reshape(b, num_tokens, self.num_heads, head_dim).transpose(0, 2, 1, 3)
        queries = (x @ self.W_query).reshape(b, num_tokens, self.num_heads, head_dim).transpose(0, 2, 1, 3)
        values = (x @ self.W_value).reshape(b, num_tokens, self.num_heads, head_dim).transpose(0, 2, 1, 3)
        attn_scores = queries @ keys.transpose(0, 1, 3, 2)            # (b, heads, T, T)
        mask = np.triu(np.ones((num_tokens, num_tokens), dtype=bool), k=1)
        attn_weights = softmax(np.where(mask, -np.inf, attn_scores) / head_dim ** 0.5)
        context_vec = (attn_weights @ values).transpose(0, 2, 1, 3).reshape(b, num_tokens, d_out)
        return context_vec @ self.c_proj_weight + self.c_proj_bias


def multi_head_attention(batch, rng):
    print("\n=== 3.6.1 Stacking multiple single-head attention layers ===")
    mha = MultiHeadAttentionWrapper(d_in=3, d_out=2, context_length=6, dropout=0.0, num_heads=2, rng=rng)
    context_vecs = mha.forward(batch)
    print(context_vecs)
    print(f"context_vecs.shape: {context_vecs.shape}")

    print("\n=== 3.6.2 Implementing multi-head attention with weight splits ===")
    a = np.array([[[[0.2745, 0.6584, 0.2775, 0.8573],
                    [0.8993, 0.0390, 0.9268, 0.7388],
                    [0.7179, 0.7058, 0.9156, 0.4340]],
                   [[0.0772, 0.3565, 0.1479, 0.5331],
                    [0.4066, 0.2318, 0.4545, 0.9737],
                    [0.4606, 0.5159, 0.4220, 0.5786]]]])   # (b, num_heads, num_tokens, head_dim) = (1, 2, 3, 4)
    print(f"a @ a.transpose(0, 1, 3, 2) (batched over the heads):\n{a @ a.transpose(0, 1, 3, 2)}")
    first_head = a[0, 0]
    print(f"First head:\n{first_head @ first_head.T}")

    mha = MultiHeadAttention(d_in=3, d_out=2, context_length=6, dropout=0.0, num_heads=2, rng=rng)
    context_vecs = mha.forward(batch)
    print(context_vecs)
    print(f"context_vecs.shape: {context_vecs.shape}")
    diff = np.abs(context_vecs - mha.forward_book_style(batch)).max()
    print(f"fused c_attn vs the book's separate W_query/W_key/W_value: max difference {diff:.2e}")

    d = 768                                  # exercise 3.3: GPT-2 small's attention layer
    n = d * 3 * d + d * d + d                # c_attn (no qkv bias) + c_proj weight and bias
    print(f"a GPT-2-size MultiHeadAttention (d_in = d_out = 768, 12 heads, qkv_bias=False) "
          f"has {n:,} parameters")


# ---- beyond the book: the attention backward, checked by finite differences --------------------
def attention_backward_check():
    print("\n=== Beyond the book: our attention backward vs. finite differences ===")
    rng = np.random.default_rng(0)
    B, T, C, H = 2, 6, 4, 2
    x = np.concatenate([np.stack([inputs, inputs[::-1]]).astype(np.float64),
                        rng.standard_normal((B, T, 1))], axis=-1)    # (2, 6, 4): the book's tokens + 1 dim
    params = {"x": x,
              "w_attn": rng.normal(0, 0.5, (C, 3 * C)), "b_attn": rng.normal(0, 0.1, 3 * C),
              "w_proj": rng.normal(0, 0.5, (C, C)), "b_proj": rng.normal(0, 0.1, C)}
    R = rng.standard_normal((B, T, C))                # loss = sum(out * R), so dloss/dout = R
    drop_rate = 0.1

    def loss(p):
        # a fresh generator with the same seed draws the same dropout mask every time
        out, cache = multihead_attention_forward(p["x"], p["w_attn"], p["b_attn"], p["w_proj"],
                                                 p["b_proj"], H, drop_rate, np.random.default_rng(7))
        return float((out * R).sum()), cache

    _, cache = loss(params)
    dx, (dw_attn, db_attn, dw_proj, db_proj) = multihead_attention_backward(R, cache)
    analytic = {"x": dx, "w_attn": dw_attn, "b_attn": db_attn, "w_proj": dw_proj, "b_proj": db_proj}
    eps = 1e-6
    worst = 0.0
    for name, p in params.items():
        numeric = np.zeros_like(p)
        for i in np.ndindex(p.shape):                # central differences, one entry at a time
            old = p[i]
            p[i] = old + eps
            up, _ = loss(params)
            p[i] = old - eps
            down, _ = loss(params)
            p[i] = old
            numeric[i] = (up - down) / (2 * eps)
        err = np.abs(analytic[name] - numeric).max() / max(np.abs(numeric).max(), 1e-3)
        worst = max(worst, err)
        print(f"  d loss / d {name:7s} {str(p.shape):8s} relative error {err:.2e}")
    print(f"attention backward vs central finite differences (float64, eps {eps:g}, "
          f"causal mask, dropout {drop_rate}): max relative error {worst:.2e}")
    return worst


# ---- plots ----------------------------------------------------------------------------------
def plot_attention(weights, causal, dropped, out):
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    for ax, w, title in zip(axes, (weights, causal, dropped),
                            ("3.3.2 attention weights (no training)", "3.5.1 causal attention weights",
                             "3.5.2 causal weights after dropout(0.5)")):
        im = ax.imshow(w, cmap="viridis")
        ax.set_xticks(range(6), WORDS, rotation=45)
        ax.set_yticks(range(6), WORDS)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        ax.set_title(title, fontsize=10)
        for i in range(6):
            for j in range(6):
                ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = out / "attention_weights.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"\nsaved {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/ch03_attention", help="folder for the plots")
    parser.add_argument("--smoke", action="store_true", help="for the tests (this chapter is quick anyway)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    simple_attention_one_query()
    attn_weights = simple_attention_all()
    trainable_weights_one_query()
    rng = np.random.default_rng(789)
    sa = self_attention_class(rng)
    attn_weights_causal = causal_attention_mask(sa)
    dropped = dropout_demo(attn_weights_causal)
    batch = causal_attention_class(rng)
    multi_head_attention(batch, rng)
    attention_backward_check()
    plot_attention(attn_weights, attn_weights_causal, dropped, out)
    print(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
