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
import numpy

from scratchgpt import backend
from scratchgpt.arrays import array_module
from scratchgpt.model import KVCache  # noqa: F401  (generation's cache, kept in the model's layers)
from scratchgpt.ops import softmax_forward


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
    if model.extensions.get("num_classes"):
        raise ValueError(f"this model is a classifier ({model.extensions['num_classes']} classes, chapter 6): "
                         "it predicts a class, not a next token")
    model._check_ids(idx[:, -model.cfg.context_length:], what="prompt token ids")
    was_training = model.training
    model.eval()
    ctx = model.cfg.context_length
    out = xp.asarray(idx)
    done = xp.zeros(out.shape[0], dtype=bool)
    cache = None
    try:
        with backend.inference():                       # no backward follows: keep no caches
            for step in range(max_new_tokens):
                if use_cache and (cache is None or cache.length < ctx):
                    if cache is None:                     # prefill: the (cropped) prompt at once
                        cache = model.kv_cache(out.shape[0])
                        logits = model.forward(out[:, -ctx:], kv_cache=cache)
                    else:                                 # one new token after the cached ones
                        logits = model.forward(out[:, -1:], kv_cache=cache)
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
