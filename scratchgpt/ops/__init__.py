"""Pure forward/backward pairs on arrays: `out, cache = f_forward(...)`, `grads = f_backward(dout, cache)`."""
from scratchgpt.ops.attention import (attention_backward, attention_forward,
                                      multihead_attention_backward, multihead_attention_forward)
from scratchgpt.ops.cross_entropy import cross_entropy_backward, cross_entropy_forward
from scratchgpt.ops.dropout import dropout_backward, dropout_forward
from scratchgpt.ops.embedding import (embedding_backward, embedding_forward,
                                      position_embedding_backward, position_embedding_forward)
from scratchgpt.ops.gelu import gelu_backward, gelu_forward
from scratchgpt.ops.layernorm import layernorm_backward, layernorm_forward
from scratchgpt.ops.linear import linear_backward, linear_forward
from scratchgpt.ops.softmax import (causal_softmax_backward, causal_softmax_forward,
                                    softmax_backward, softmax_forward)
