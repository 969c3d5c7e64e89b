"""Optimizers that update the model's flat parameter buffer in one vectorised step.

A model with frozen parameters (GPTModel.set_trainable / freeze) goes through TrainableParams,
which packs the trainable ones into a buffer of their own: an optimizer over the model's whole
buffer would decay (and, with old moments, move) the frozen weights too.
"""
import math

from scratchgpt import backend
from scratchgpt.arrays import array_module


def _check_nothing_frozen(model, name):
    """An optimizer steps the whole flat buffer it is given: refuse a model with frozen parameters."""
    frozen = getattr(model, "frozen", ())      # a GPTModel has it; TrainableParams does not
    if frozen:
        raise ValueError(f"{name} was given a model with {len(frozen)} frozen parameters "
                         f"(e.g. {sorted(frozen)[0]!r}); it would update and decay them too. "
                         f"Pass TrainableParams(model) instead: params = TrainableParams(model); "
                         f"opt = {name}(params, ...); after backward(), params.step(opt)")


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter), the update torch.optim.AdamW does:

        p <- p * (1 - lr * wd)                              only for the 2-D weights (GPT-2 / nanoGPT)
        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
        p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    Biases, LayerNorm weights and position/token tables of 1-D shape get no decay; the
    model stores the decayed tensors first, so decay is one slice: params[:model.n_decay].
    """

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        _check_nothing_frozen(model, "AdamW")
        self.model = model
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        xp = array_module(model.flat_params)
        self.m = xp.zeros_like(model.flat_params)
        self.v = xp.zeros_like(model.flat_params)
        self._tmp = None         # the array path's scratch buffer, made on its first step
        self.t = 0

    def step(self):
        _check_nothing_frozen(self.model, "AdamW")       # also if frozen after construction
        xp = array_module(self.m)
        p, g, m, v, tmp = self.model.flat_params, self.model.flat_grads, self.m, self.v, self._tmp
        b1, b2 = self.betas
        self.t += 1
        k = getattr(backend.ops, "adamw_step", None)     # the fast kernel, where there is one
        if k is not None:                                # the same update in one pass over memory
            k(p, g, m, v, self.t, self.lr, self.betas, self.eps, self.weight_decay,
                         self.model.n_decay if self.weight_decay else 0)
            return
        if tmp is None:                                  # reused every step: no large temporaries
            tmp = self._tmp = xp.empty_like(p)
        if self.weight_decay:
            p[:self.model.n_decay] *= 1.0 - self.lr * self.weight_decay
        m *= b1                                          # m = b1 m + (1 - b1) g
        xp.multiply(g, 1.0 - b1, out=tmp)
        m += tmp
        v *= b2                                          # v = b2 v + (1 - b2) g^2
        xp.multiply(g, g, out=tmp)
        tmp *= 1.0 - b2
        v += tmp
        xp.sqrt(v, out=tmp)                              # denominator, bias-corrected
        tmp *= 1.0 / math.sqrt(1.0 - b2 ** self.t)
        tmp += self.eps
        xp.divide(m, tmp, out=tmp)
        tmp *= self.lr / (1.0 - b1 ** self.t)
        p -= tmp

    def zero_grad(self):
        self.model.zero_grad()

    def state_dict(self):
        """Arrays and numbers only (a checkpoint stores it without pickle)."""
        return {"m": self.m, "v": self.v, "t": self.t, "lr": self.lr, "betas": list(self.betas),
                "eps": self.eps, "weight_decay": self.weight_decay}

    def load_state_dict(self, d):
        for name in ("m", "v"):
            if tuple(d[name].shape) != self.m.shape:
                raise ValueError(f"optimizer state {name!r} has shape {tuple(d[name].shape)}, "
                                 f"the model has {self.m.shape[0]} parameters")
        self.m[...] = array_module(self.m).asarray(d["m"])
        self.v[...] = array_module(self.v).asarray(d["v"])
        self.t = int(d["t"])
        self.lr, self.betas = float(d["lr"]), tuple(d["betas"])
        self.eps, self.weight_decay = float(d["eps"]), float(d["weight_decay"])


class SGD:
    """Plain gradient descent, p <- p - lr * g (with optional momentum), for comparison."""

    def __init__(self, model, lr=1e-2, momentum=0.0):
        _check_nothing_frozen(model, "SGD")
        self.model, self.lr, self.momentum = model, lr, momentum
        self.buf = array_module(model.flat_params).zeros_like(model.flat_params) if momentum else None

    def step(self):
        _check_nothing_frozen(self.model, "SGD")
        g = self.model.flat_grads
        if self.buf is not None:                         # buf = momentum * buf + g
            self.buf *= self.momentum
            self.buf += g
            g = self.buf
        self.model.flat_params -= self.lr * g

    def zero_grad(self):
        self.model.zero_grad()


def clip_grad_norm(model, max_norm):
    """Scale all gradients so their global L2 norm is at most max_norm (torch's clip_grad_norm_).

    Returns the norm before clipping as a 0-d array (call float() on it to log it; on a GPU
    the norm and the scaling stay on the device, with no synchronisation).
    """
    g = model.flat_grads
    xp = array_module(g)
    total = xp.sqrt(xp.dot(g, g))                        # one pass, no g * g temporary
    g *= xp.minimum(max_norm / (total + 1e-6), 1.0)      # coef = min(max_norm / norm, 1)
    return total


class TrainableParams:
    """The model's trainable parameters packed into one flat buffer of their own (2-D weights
    first), with the interface AdamW and clip_grad_norm use: flat_params, flat_grads, n_decay.

        params = TrainableParams(model)
        opt = AdamW(params, lr=5e-5, weight_decay=0.1)
        ... model.backward(); params.step(opt)      # gradients in, AdamW, new values out

    Copying the trainable entries in and out costs O(trainable) per step, far less than an
    AdamW pass over a mostly frozen 124M buffer, and leaves frozen weights bit-identical.
    """

    def __init__(self, model):
        self.model = model
        names = sorted(model.trainable_names(), key=lambda k: model.params[k].ndim < 2)
        xp = array_module(model.flat_params)
        self.slices, at = {}, 0
        for k in names:
            self.slices[k] = slice(at, at + model.params[k].size)
            at += model.params[k].size
        self.n_decay = sum(model.params[k].size for k in names if model.params[k].ndim >= 2)
        self.flat_params = xp.zeros(at, dtype=model.dtype)
        self.flat_grads = xp.zeros(at, dtype=model.dtype)
        for k, sl in self.slices.items():
            self.flat_params[sl] = model.params[k].reshape(-1)

    def zero_grad(self):
        self.model.zero_grad()

    def step(self, opt, grad_clip=None):
        """Gather the gradients, clip (optional), one optimizer step, write the values back."""
        for k, sl in self.slices.items():
            self.flat_grads[sl] = self.model.grad[k].reshape(-1)
        norm = clip_grad_norm(self, grad_clip) if grad_clip else None
        opt.step()
        for k, sl in self.slices.items():
            self.model.params[k][...] = self.flat_params[sl].reshape(self.model.params[k].shape)
        return norm
