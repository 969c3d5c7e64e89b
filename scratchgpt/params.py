"""One flat array for all parameters and one for their gradients, with a view per name.

    buf = ParamBuffer({"transformer.wte.weight": (V, C), ...}, dtype, xp)
    buf.params["transformer.wte.weight"]     # a (V, C) view into buf.flat
    buf.grads[...]                           # the same names, views into buf.grad_flat

The optimizer updates buf.flat in one vectorised step. Tensors that get weight decay (2-D and
up: matrices and embeddings; not biases or LayerNorm scales) come first, so "decay these" is
the slice flat[:n_decay]. This module also keeps which parameters are frozen (fine-tuning) and
checks a state dict strictly before loading it.
"""
import fnmatch
import math


class ParamBuffer:
    def __init__(self, shapes, dtype, xp):
        self.shapes = dict(shapes)
        order = sorted(self.shapes, key=lambda k: len(self.shapes[k]) < 2)   # decayed first (stable)
        sizes = {k: math.prod(s) for k, s in self.shapes.items()}
        self.n_decay = sum(sizes[k] for k in order if len(self.shapes[k]) >= 2)
        self.flat = xp.zeros(sum(sizes.values()), dtype=dtype)
        self.grad_flat = xp.zeros_like(self.flat)
        self.params, self.grads, at = {}, {}, 0
        offsets = {}
        for k in order:
            offsets[k], at = at, at + sizes[k]
        for k in self.shapes:                                   # names in the order they were given
            a, b = offsets[k], offsets[k] + sizes[k]
            self.params[k] = self.flat[a:b].reshape(self.shapes[k])
            self.grads[k] = self.grad_flat[a:b].reshape(self.shapes[k])
        self.frozen = set()

    # -- freezing (chapters 6 and 7, appendix E)
    def set_trainable(self, names=None):
        """Freeze every parameter except those `names` selects; None trains all of them.

        An entry selects by full name, by a prefix ending at a dot ("transformer.h.1" selects
        block 1, not blocks 10 and 11), or by a glob ("*.lora_A"). Frozen gradients are zero.
        """
        self.grad_flat[...] = 0
        if names is None:
            self.frozen = set()
            return
        names = [names] if isinstance(names, str) else list(names)
        picked = {n: {k for k in self.params if selects(n, k)} for n in names}
        unknown = [n for n, ks in picked.items() if not ks]
        if unknown:
            raise ValueError(f"no parameter is named or starts with {unknown[0]!r} "
                             f"(names look like {next(iter(self.params))!r})")
        self.frozen = set(self.params) - set().union(*picked.values())

    def trainable_names(self):
        return [k for k in self.params if k not in self.frozen]

    def zero_grad(self):
        if not self.frozen:
            self.grad_flat[...] = 0
            return
        for k in self.trainable_names():      # frozen gradients are never written: they stay 0
            self.grads[k][...] = 0

    # -- strict loading
    def check_state_dict(self, d):
        """Raise a ValueError naming what differs unless `d` has exactly our names, shapes and dtypes."""
        missing = sorted(set(self.params) - set(d))
        extra = sorted(set(d) - set(self.params))
        if missing or extra:
            msg = []
            if missing:
                msg.append(f"missing {len(missing)} entr{'y' if len(missing) == 1 else 'ies'}: {missing[:5]}")
            if extra:
                msg.append(f"unexpected {len(extra)} entr{'y' if len(extra) == 1 else 'ies'}: {extra[:5]}")
            raise ValueError("state dict does not match the model: " + "; ".join(msg))
        for k, p in self.params.items():
            v = d[k]
            if tuple(v.shape) != p.shape:
                raise ValueError(f"state dict entry {k!r} has shape {tuple(v.shape)}, the model expects {p.shape}")
            if v.dtype != p.dtype:
                raise ValueError(f"state dict entry {k!r} has dtype {v.dtype}, the model expects {p.dtype}")

    def load_state_dict(self, d, xp):
        self.check_state_dict(d)
        for k, p in self.params.items():
            p[...] = xp.asarray(d[k])


def selects(entry, name):
    """set_trainable's rule: the full name, a dotted prefix, or a glob pattern."""
    if any(c in entry for c in "*?["):
        return fnmatch.fnmatchcase(name, entry)
    return name == entry or name.startswith(entry.rstrip(".") + ".")
