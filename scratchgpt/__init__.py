"""scratchgpt: a GPT from scratch, with every forward and backward written by hand.

    import scratchgpt as sg
    model = sg.GPTModel(sg.GPTConfig(vocab_size=65, context_length=64, emb_dim=128,
                                     n_heads=4, n_layers=4))
"""
from scratchgpt.distributed import share_cores_between_ranks

share_cores_between_ranks()      # under mpiexec: before NumPy starts its threads

from scratchgpt import backend  # noqa: E402
from scratchgpt.gpt2 import load_gpt2, save_gpt2
from scratchgpt.hf import load_hf
from scratchgpt.llama import Llama3Config, Llama3Model, Qwen3Config, Qwen3Model
from scratchgpt.model import (GELU, FeedForward, GPTConfig, GPTModel, LayerNorm,
                              MultiHeadAttention, TransformerBlock)
from scratchgpt.optim import SGD, AdamW, TrainableParams, clip_grad_norm
from scratchgpt.tokenizer import BPETokenizer, CharTokenizer, tokenizer_from_dict

__version__ = "0.1.0"
