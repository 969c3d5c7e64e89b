"""A plain torch eager Llama 3 (the book's ch05/07_gpt_to_llama, written with torch ops) with the
same config as scratchgpt's Llama3Model, used only by the benchmarks as the speed reference.
Same math: RMSNorm, RoPE (half layout), SwiGLU, grouped-query attention, tied head, no biases."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, cos, sin):
    h = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., h:], x[..., :h]), dim=-1) * sin


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, hd, F_ = cfg.emb_dim, cfg.head_dim, cfg.hidden_dim
        self.H, self.KV, self.hd, self.eps = cfg.n_heads, cfg.n_kv_groups, hd, cfg.rms_norm_eps
        self.norm1, self.norm2 = nn.Parameter(torch.ones(C)), nn.Parameter(torch.ones(C))
        self.q = nn.Linear(C, self.H * hd, bias=False)
        self.k = nn.Linear(C, self.KV * hd, bias=False)
        self.v = nn.Linear(C, self.KV * hd, bias=False)
        self.o = nn.Linear(self.H * hd, C, bias=False)
        self.gate, self.up = nn.Linear(C, F_, bias=False), nn.Linear(C, F_, bias=False)
        self.down = nn.Linear(F_, C, bias=False)

    def attn(self, x, cos, sin, kv, start):
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.H, self.hd).transpose(1, 2)
        k = self.k(x).view(B, T, self.KV, self.hd).transpose(1, 2)
        v = self.v(x).view(B, T, self.KV, self.hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if kv is not None:                                  # preallocated (B, KV, ctx, hd) caches
            kv[0][:, :, start:start + T], kv[1][:, :, start:start + T] = k, v
            k, v = kv[0][:, :, :start + T], kv[1][:, :, :start + T]
        G = self.H // self.KV
        k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
        # explicit attention (no fused SDPA), like the book's GroupedQueryAttention
        s = (q @ k.transpose(-2, -1)) / math.sqrt(self.hd)
        mask = torch.arange(k.shape[2])[None, :] > (start + torch.arange(T))[:, None]
        a = torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1)
        return self.o((a @ v).transpose(1, 2).reshape(B, T, -1))

    def forward(self, x, cos, sin, kv=None, start=0):
        x = x + self.attn(rms_norm(x, self.norm1, self.eps), cos, sin, kv, start)
        h = rms_norm(x, self.norm2, self.eps)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class TorchLlama(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.Parameter(torch.ones(cfg.emb_dim))
        inv_freq = 1.0 / cfg.rope_base ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim)
        ang = torch.arange(cfg.context_length, dtype=torch.float64)[:, None] * inv_freq[None, :]
        ang = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)

    def forward(self, idx, targets=None, kvs=None, start=0):
        T = idx.shape[1]
        cos, sin = self.cos[start:start + T], self.sin[start:start + T]
        x = self.emb(idx)
        for i, b in enumerate(self.blocks):
            x = b(x, cos, sin, None if kvs is None else kvs[i], start)
        logits = rms_norm(x, self.norm, self.cfg.rms_norm_eps) @ self.emb.weight.T
        if targets is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def torch_llama_generate(model, idx, n):
    """Greedy decoding with a KV cache and scratchgpt.generate.generate's window rule."""
    cfg, B = model.cfg, idx.shape[0]
    ctx = cfg.context_length
    kvs, length, out = None, 0, idx
    for _ in range(n):
        if kvs is None or length < ctx:
            if kvs is None:
                shape = (B, cfg.n_kv_groups, ctx, cfg.head_dim)
                kvs = [(torch.zeros(shape), torch.zeros(shape)) for _ in range(cfg.n_layers)]
                chunk = out[:, -ctx:]
            else:
                chunk = out[:, -1:]
            logits = model(chunk, kvs=kvs, start=length)
            length += chunk.shape[1]
        else:                                          # the window is full: recompute it
            logits = model(out[:, -ctx:])
        out = torch.cat([out, logits[:, -1, :].argmax(dim=-1)[:, None]], dim=1)
    return out
