"""The reference ops: pure forward/backward pairs on arrays, NumPy or CuPy.

    out, cache = f_forward(...)          the cache holds what the backward needs (a named tuple)
    grads = f_backward(dout, cache)      the input gradient(s), then the parameter gradients

These are the readable versions, and the oracle the fast ones (scratchgpt.kernels.ops) are
tested against. The model does not import them directly: it calls `backend.ops`, which is this
module or the fast one with the same functions (see scratchgpt.backend).
"""
from scratchgpt.ops.attention import (AttentionCache, attention_backward, attention_forward,
                                      cached_attention_forward, merge_heads,
                                      multihead_attention_backward, multihead_attention_forward,
                                      split_heads)
from scratchgpt.ops.cross_entropy import CrossEntropyCache, cross_entropy_backward, cross_entropy_forward
from scratchgpt.ops.dropout import dropout_backward, dropout_forward
from scratchgpt.ops.embedding import (EmbeddingCache, embedding_backward, embedding_forward,
                                      position_embedding_backward, position_embedding_forward)
from scratchgpt.ops.gelu import gelu_backward, gelu_forward
from scratchgpt.ops.gqa import GQACache, grouped_query_attention_backward, grouped_query_attention_forward
from scratchgpt.ops.layernorm import LayerNormCache, layernorm_backward, layernorm_forward
from scratchgpt.ops.linear import LinearCache, linear_backward, linear_forward
from scratchgpt.ops.rmsnorm import RMSNormCache, rmsnorm_backward, rmsnorm_forward
from scratchgpt.ops.rope import RopeCache, rope_backward, rope_forward
from scratchgpt.ops.softmax import (causal_softmax_backward, causal_softmax_forward,
                                    softmax_backward, softmax_forward)
from scratchgpt.ops.swiglu import (SiLUCache, SwiGLUCache, silu_backward, silu_forward, swiglu_backward,
                                   swiglu_forward)
