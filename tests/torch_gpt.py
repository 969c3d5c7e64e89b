"""An independent GPT-2 in torch, written for the tests: Hugging Face names and layouts,
linear weights (in, out). It is the oracle our hand-written forward and backward are checked against."""
import math

import torch
import torch.nn.functional as F


def torch_params(state_dict, requires_grad=True):
    return {k: torch.tensor(v, requires_grad=requires_grad) for k, v in state_dict.items()}


def torch_gpt_logits(P, idx, cfg, masks=None):
    """P: {name: tensor}; idx: (B, T) LongTensor. masks: optional list of dropout masks
    (already scaled by 1/(1-p)) in the order our model draws them, to replay dropout exactly."""
    masks = list(masks) if masks is not None else None

    def drop(x):
        if masks is None or cfg.drop_rate == 0:
            return x
        return x * masks.pop(0)

    B, T = idx.shape
    C, H = cfg.emb_dim, cfg.n_heads
    hd = C // H
    x = P["transformer.wte.weight"][idx] + P["transformer.wpe.weight"][:T]
    x = drop(x)
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    gelu = "tanh" if cfg.gelu_approximate == "tanh" else "none"

    def ln(x, name):
        return F.layer_norm(x, (C,), P[name + ".weight"], P[name + ".bias"], eps=1e-5)

    def attn(x, h):
        qkv = x @ P[h + "attn.c_attn.weight"]
        if cfg.qkv_bias:
            qkv = qkv + P[h + "attn.c_attn.bias"]
        q, k, v = qkv.split(C, dim=2)
        q, k, v = (t.view(B, T, H, hd).transpose(1, 2) for t in (q, k, v))
        s = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        a = torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1)
        a = drop(a)
        y = (a @ v).transpose(1, 2).reshape(B, T, C)
        return y @ P[h + "attn.c_proj.weight"] + P[h + "attn.c_proj.bias"]

    def mlp(x, h):
        x = F.gelu(x @ P[h + "mlp.c_fc.weight"] + P[h + "mlp.c_fc.bias"], approximate=gelu)
        return x @ P[h + "mlp.c_proj.weight"] + P[h + "mlp.c_proj.bias"]

    for i in range(cfg.n_layers):
        h = f"transformer.h.{i}."
        if cfg.post_norm:
            x = ln(x + drop(attn(x, h)), h + "ln_1")
            x = ln(x + drop(mlp(x, h)), h + "ln_2")
        else:
            x = x + drop(attn(ln(x, h + "ln_1"), h))
            x = x + drop(mlp(ln(x, h + "ln_2"), h))
    x = ln(x, "transformer.ln_f")
    head = P["transformer.wte.weight"] if cfg.tie_weights else P["lm_head.weight"]
    return x @ head.T
