"""Text generation: greedy, temperature, top-k and top-p sampling, with a KV cache.

    ids = generate(model, idx, max_new_tokens=100, temperature=0.8, top_k=40, rng=rng)

Without a cache every new token reruns the whole sequence through the model. With the
KV cache the prompt is run once ("prefill") and each later step feeds only the newest
token, reusing the keys and values every block computed before. Both give the same
logits (a test checks it); the cache is just faster.

Like the book, a sequence longer than the context keeps only its last `context_length`
tokens. Position embeddings stop at `context_length`, so once the window is full the
cached keys would sit at the wrong positions: from then on each step recomputes the last
`context_length` tokens, exactly what the uncached path does.
"""
import math

import numpy

from scratchgpt import backend
from scratchgpt.backend import array_module
from scratchgpt.ops import gelu_forward, layernorm_forward, linear_forward, softmax_forward


# ---- picking the next token --------------------------------------------------------------
def sample_next(logits, temperature=0.0, top_k=None, top_p=None, rng=None):
    """(B, V) logits of the last position -> (B,) next token ids.

    temperature 0 is greedy (argmax). Otherwise logits / temperature, optionally keeping
    only the top_k largest and/or the smallest set whose probability reaches top_p, then
    one draw from the softmax.
    """
    xp = array_module(logits)
    if temperature == 0.0:
        return logits.argmax(axis=-1)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    logits = logits / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        k = min(int(top_k), logits.shape[-1])
        kth = xp.sort(logits, axis=-1)[:, -k][:, None]           # the k-th largest per row
        logits = xp.where(logits < kth, -xp.inf, logits)
    probs, _ = softmax_forward(logits)
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        order = xp.argsort(-probs, axis=-1)
        sorted_p = xp.take_along_axis(probs, order, axis=-1)
        before = xp.cumsum(sorted_p, axis=-1) - sorted_p           # mass of the tokens ranked above
        sorted_p = xp.where(before < top_p, sorted_p, 0.0)         # keep until top_p is reached
        probs = xp.zeros_like(probs)
        xp.put_along_axis(probs, order, sorted_p, axis=-1)
        probs /= probs.sum(axis=-1, keepdims=True)
    if rng is None:
        rng = backend.rng(None)
    # inverse-CDF draw: the first token whose cumulative probability exceeds u ~ U(0, 1)
    u = rng.random((probs.shape[0], 1), dtype=probs.dtype)
    cdf = xp.cumsum(probs, axis=-1)
    nxt = (cdf < u * cdf[:, -1:]).sum(axis=-1)
    return xp.minimum(nxt, probs.shape[-1] - 1)


# ---- the cached forward ------------------------------------------------------------------
class KVCache:
    """Keys and values of every block for positions 0..length-1: (B, H, context_length, hd)."""

    def __init__(self, model, batch_size):
        cfg = model.cfg
        xp = array_module(model.flat_params)
        hd = cfg.emb_dim // cfg.n_heads
        shape = (batch_size, cfg.n_heads, cfg.context_length, hd)
        self.k = [xp.zeros(shape, dtype=model.dtype) for _ in range(cfg.n_layers)]
        self.v = [xp.zeros(shape, dtype=model.dtype) for _ in range(cfg.n_layers)]
        self.length = 0


def forward_cached(model, idx, cache):
    """Logits (B, T_new, V) for tokens `idx` (B, T_new) placed after the cache's `length` tokens.

    Inference only (no backward, no dropout); the same math as GPTModel.forward, where
    query t of the new chunk attends to every cached key and to new keys up to itself.
    """
    cfg, P = model.cfg, model.params
    if cfg.lora_rank or cfg.num_classes:
        raise ValueError("the KV-cache path runs plain language models only: merge LoRA adapters first "
                         "(scratchgpt.lora) and use a model with a language-model head, not a classifier")
    xp = array_module(model.flat_params)
    B, Tn = idx.shape
    start = cache.length
    if start + Tn > cfg.context_length:
        raise ValueError(f"the KV cache holds {start} tokens; {Tn} more exceed the context length {cfg.context_length}")
    H, hd = cfg.n_heads, cfg.emb_dim // cfg.n_heads
    x = P["transformer.wte.weight"][idx] + P["transformer.wpe.weight"][start:start + Tn]   # (B, Tn, C)
    # key j is visible to new query i when j <= start + i
    future = xp.arange(start + Tn)[None, :] > (start + xp.arange(Tn))[:, None]             # (Tn, start+Tn)
    for i in range(cfg.n_layers):
        h = f"transformer.h.{i}."
        a = x if cfg.post_norm else layernorm_forward(x, P[h + "ln_1.weight"], P[h + "ln_1.bias"])[0]
        qkv, _ = linear_forward(a, P[h + "attn.c_attn.weight"], P.get(h + "attn.c_attn.bias"))
        q, k, v = qkv.reshape(B, Tn, 3, H, hd).transpose(2, 0, 3, 1, 4)                  # (B, H, Tn, hd)
        cache.k[i][:, :, start:start + Tn] = k
        cache.v[i][:, :, start:start + Tn] = v
        keys, values = cache.k[i][:, :, :start + Tn], cache.v[i][:, :, :start + Tn]
        scores = (q @ keys.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(hd))                 # (B, H, Tn, start+Tn)
        att, _ = softmax_forward(xp.where(future, -xp.inf, scores))
        y = (att @ values).transpose(0, 2, 1, 3).reshape(B, Tn, cfg.emb_dim)
        y, _ = linear_forward(y, P[h + "attn.c_proj.weight"], P[h + "attn.c_proj.bias"])
        if cfg.post_norm:
            x = layernorm_forward(x + y, P[h + "ln_1.weight"], P[h + "ln_1.bias"])[0]
            f = _mlp(x, P, h, cfg)
            x = layernorm_forward(x + f, P[h + "ln_2.weight"], P[h + "ln_2.bias"])[0]
        else:
            x = x + y
            f = _mlp(layernorm_forward(x, P[h + "ln_2.weight"], P[h + "ln_2.bias"])[0], P, h, cfg)
            x = x + f
    cache.length = start + Tn
    x = layernorm_forward(x, P["transformer.ln_f.weight"], P["transformer.ln_f.bias"])[0]
    return linear_forward(x, P[model.head_name].T)[0]                                    # (B, Tn, V)


def _mlp(x, P, h, cfg):
    f, _ = linear_forward(x, P[h + "mlp.c_fc.weight"], P[h + "mlp.c_fc.bias"])
    f, _ = gelu_forward(f, cfg.gelu_approximate)
    return linear_forward(f, P[h + "mlp.c_proj.weight"], P[h + "mlp.c_proj.bias"])[0]


# ---- the loop ----------------------------------------------------------------------------
def generate(model, idx, max_new_tokens, temperature=0.0, top_k=None, top_p=None,
             rng=None, eos_id=None, use_cache=True, on_token=None):
    """Append up to `max_new_tokens` tokens to each row of `idx` (B, T) and return (B, T + new).

    Greedy when temperature == 0; `rng` (a backend generator) makes sampling reproducible.
    Stops early once every row has produced `eos_id`. `on_token(ids)` is called with each
    step's (B,) new ids (host array), for streaming output.
    """
    xp = backend.xp
    idx = numpy.asarray(idx) if isinstance(idx, (list, tuple)) else idx
    if idx.ndim == 1:
        idx = idx[None, :]
    model._check_ids(idx[:, -model.cfg.context_length:], "prompt token ids")
    was_training = model.training
    model.eval()
    ctx = model.cfg.context_length
    out = xp.asarray(idx)
    done = xp.zeros(out.shape[0], dtype=bool)
    cache = None
    try:
        for step in range(max_new_tokens):
            if use_cache and (cache is None or cache.length < ctx):
                if cache is None:                     # prefill: the (cropped) prompt at once
                    cache = KVCache(model, out.shape[0])
                    logits = forward_cached(model, out[:, -ctx:], cache)
                else:                                 # one new token
                    logits = forward_cached(model, out[:, -1:], cache)
            else:                                     # no cache, or the window is full
                logits = model.forward(out[:, -ctx:])
            nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, rng)
            if eos_id is not None:
                nxt = xp.where(done, eos_id, nxt)
                done |= nxt == eos_id
            out = xp.concatenate([out, nxt[:, None].astype(out.dtype)], axis=1)
            if on_token is not None:
                on_token(backend.to_numpy(nxt))
            if eos_id is not None and bool(done.all()):
                break
    finally:
        model.train(was_training)
    return out


def generate_text_simple(model, idx, max_new_tokens, context_size=None):
    """The book's greedy loop (chapter 4): argmax of the last position, no cache."""
    return generate(model, idx, max_new_tokens, temperature=0.0, use_cache=False)


def generate_text(model, tokenizer, prompt, max_new_tokens=200, temperature=0.8, top_k=None,
                  top_p=None, seed=None, num_samples=1, eos_id=None):
    """Text in, list of `num_samples` texts out (each prompt + continuation)."""
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("the prompt is empty: give at least one character (or token)")
    idx = numpy.asarray([ids] * num_samples, dtype=numpy.int64)
    out = generate(model, idx, max_new_tokens, temperature, top_k, top_p,
                   rng=backend.rng(seed), eos_id=eos_id)
    return [tokenizer.decode([int(t) for t in row]) for row in backend.to_numpy(out)]
