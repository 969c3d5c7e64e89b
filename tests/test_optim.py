"""scratchgpt/optim.py against torch.optim in float64, to rounding: AdamW (its array path and
whatever kernel is on), SGD with momentum, clip_grad_norm on both sides of the threshold, the
state round trip and the errors."""
import numpy as np
import pytest
import torch

import scratchgpt as sg
from scratchgpt.optim import SGD, AdamW, TrainableParams, clip_grad_norm


class Flat:
    """The interface the optimizers use: flat_params, flat_grads, n_decay."""

    def __init__(self, n=50, n_decay=30, seed=0):
        self.flat_params = np.random.default_rng(seed).standard_normal(n)
        self.flat_grads = np.zeros(n)
        self.n_decay = n_decay


def torch_pair(flat):
    w = torch.tensor(flat.flat_params)
    return w[:flat.n_decay].clone().requires_grad_(), w[flat.n_decay:].clone().requires_grad_()


def feed(flat, tensors, rng):
    g = rng.standard_normal(flat.flat_grads.shape) * rng.uniform(1e-3, 10)
    flat.flat_grads[...] = g
    tensors[0].grad = torch.tensor(g[:flat.n_decay])
    tensors[1].grad = torch.tensor(g[flat.n_decay:])


@pytest.mark.parametrize("weight_decay,betas,eps", [(0.1, (0.9, 0.95), 1e-8), (0.0, (0.8, 0.999), 1e-3)])
def test_adamw_is_torch_adamw_to_rounding(kernels, weight_decay, betas, eps):
    flat = Flat()
    opt = AdamW(flat, lr=3e-2, betas=betas, eps=eps, weight_decay=weight_decay)
    t = torch_pair(flat)
    topt = torch.optim.AdamW([{"params": [t[0]], "weight_decay": weight_decay},
                              {"params": [t[1]], "weight_decay": 0.0}], lr=3e-2, betas=betas, eps=eps)
    rng = np.random.default_rng(1)
    for _ in range(6):
        feed(flat, t, rng)
        opt.step()
        topt.step()
    want = torch.cat([t[0], t[1]]).detach().numpy()
    np.testing.assert_allclose(flat.flat_params, want, rtol=1e-12, atol=1e-14)
    assert opt.t == 6


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_is_torch_sgd(momentum):
    flat = Flat()
    opt = SGD(flat, lr=0.1, momentum=momentum)
    t = torch.tensor(flat.flat_params).requires_grad_()
    topt = torch.optim.SGD([t], lr=0.1, momentum=momentum)
    rng = np.random.default_rng(2)
    for _ in range(4):
        g = rng.standard_normal(flat.flat_grads.shape)
        flat.flat_grads[...] = g
        t.grad = torch.tensor(g)
        opt.step()
        topt.step()
    np.testing.assert_allclose(flat.flat_params, t.detach().numpy(), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_clip_grad_norm_is_torchs_below_at_and_above_the_threshold(scale):
    flat = Flat()
    g = np.random.default_rng(3).standard_normal(flat.flat_grads.shape)
    g *= scale / np.linalg.norm(g)                        # norm exactly `scale`
    flat.flat_grads[...] = g
    t = torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
    t.grad = torch.tensor(g)
    ref = torch.nn.utils.clip_grad_norm_([t], 1.0)
    norm = clip_grad_norm(flat, 1.0)
    assert float(norm) == pytest.approx(float(ref), rel=1e-14)
    np.testing.assert_allclose(flat.flat_grads, t.grad.numpy(), rtol=1e-14, atol=0)


def test_adamw_state_round_trip_continues_the_same_steps():
    a, b = Flat(), Flat()
    opt_a = AdamW(a, lr=1e-2, betas=(0.85, 0.97), eps=1e-6, weight_decay=0.2)
    rng = np.random.default_rng(4)
    for _ in range(3):
        a.flat_grads[...] = rng.standard_normal(a.flat_grads.shape)
        opt_a.step()
    b.flat_params[...] = a.flat_params
    opt_b = AdamW(b)                                      # defaults, replaced by the state
    state = opt_a.state_dict()
    opt_b.load_state_dict({k: (np.array(v) if k in ("m", "v") else v) for k, v in state.items()})
    assert (opt_b.lr, opt_b.betas, opt_b.eps, opt_b.weight_decay, opt_b.t) == (1e-2, (0.85, 0.97), 1e-6, 0.2, 3)
    g = rng.standard_normal(a.flat_grads.shape)
    a.flat_grads[...] = g
    b.flat_grads[...] = g
    opt_a.step()
    opt_b.step()
    np.testing.assert_array_equal(a.flat_params, b.flat_params)


def test_adamw_state_of_another_size_is_refused():
    opt = AdamW(Flat(n=50))
    state = AdamW(Flat(n=40)).state_dict()
    with pytest.raises(ValueError, match=r"optimizer state 'm' has shape \(40,\), the model has 50 parameters"):
        opt.load_state_dict(state)
    state = dict(opt.state_dict(), v=np.zeros(49))
    with pytest.raises(ValueError, match=r"optimizer state 'v' has shape \(49,\)"):
        opt.load_state_dict(state)


@pytest.mark.parametrize("make", [AdamW, SGD])
def test_optimizers_refuse_a_model_with_frozen_parameters(make):
    model = sg.GPTModel(sg.GPTConfig(vocab_size=11, context_length=4, emb_dim=8, n_heads=2, n_layers=1))
    model.freeze(["transformer.ln_f"])
    with pytest.raises(ValueError, match=f"{make.__name__} was given a model with .* frozen parameters"):
        make(model)
    opt = make(sg.GPTModel(model.cfg))
    opt.model.freeze(["transformer.ln_f"])
    with pytest.raises(ValueError, match=f"{make.__name__} was given a model with 13 frozen parameters "
                                         r"\(e.g. 'transformer.h.0.attn.c_attn.weight'\)"):
        opt.step()


def test_sgd_defaults_are_plain_steps_of_0_01():
    flat = Flat()
    start = flat.flat_params.copy()
    opt = SGD(flat)
    flat.flat_grads[...] = 1.0
    opt.step()
    opt.step()                                            # no momentum by default: two equal steps
    np.testing.assert_allclose(flat.flat_params, start - 2 * 1e-2, rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("grad_clip", [None, 0.05])
def test_trainable_params_with_nothing_frozen_is_adamw_on_the_model(dtype, grad_clip):
    """The packed buffer (2-D weights first, as the model's own) gives the very same steps,
    weight decay on the same entries, in the model's dtype."""
    cfg = sg.GPTConfig(vocab_size=11, context_length=4, emb_dim=8, n_heads=2, n_layers=2, qkv_bias=True)
    a, b = sg.GPTModel(cfg, seed=0, dtype=dtype), sg.GPTModel(cfg, seed=0, dtype=dtype)
    opt_a = AdamW(a, lr=1e-2, weight_decay=0.5)
    params = TrainableParams(b)
    assert params.flat_params.dtype == np.dtype(dtype) and params.n_decay == a.n_decay
    opt_b = AdamW(params, lr=1e-2, weight_decay=0.5)
    idx = np.random.default_rng(6).integers(0, 11, (2, 4))
    for _ in range(3):
        for m in (a, b):
            m.zero_grad()
            m.loss(idx, idx)
            m.backward()
        if grad_clip:
            clip_grad_norm(a, grad_clip)
        opt_a.step()
        params.step(opt_b, grad_clip=grad_clip)
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=1e-12 if dtype == "float64" else 1e-6,
                                   atol=0, err_msg=k)


def test_trainable_params_step_moves_only_the_trainable_weights_as_adamw_would():
    cfg = sg.GPTConfig(vocab_size=11, context_length=4, emb_dim=8, n_heads=2, n_layers=2)
    model = sg.GPTModel(cfg, seed=0, dtype="float64")
    model.freeze(["transformer.h.1", "transformer.ln_f"])
    before = {k: np.array(v) for k, v in model.params.items()}
    params = TrainableParams(model)
    assert params.n_decay == sum(model.params[k].size for k in model.trainable_names() if model.params[k].ndim >= 2)
    opt = AdamW(params, lr=1e-2, weight_decay=0.1)
    idx = np.random.default_rng(5).integers(0, 11, (2, 4))
    model.zero_grad()
    model.loss(idx, idx)
    model.backward()
    grads = {k: np.array(model.grad[k]) for k in model.trainable_names()}
    norm = params.step(opt, grad_clip=1e-3)
    assert float(norm) == pytest.approx(np.sqrt(sum((g ** 2).sum() for g in grads.values())), rel=1e-12)
    for k, v in model.params.items():
        if k in grads:
            assert not np.array_equal(v, before[k]), k
        else:
            np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_adamw_defaults_are_torchs():
    ours = AdamW(Flat()).state_dict()
    theirs = torch.optim.AdamW([torch.zeros(1)]).defaults
    assert (ours["lr"], tuple(ours["betas"]), ours["eps"], ours["weight_decay"]) == \
        (theirs["lr"], theirs["betas"], theirs["eps"], theirs["weight_decay"])
