"""Chapter 6's classification head: the LM head replaced by `score`, emb_dim -> num_classes.

    model = add_classification_head(model, num_classes=2)
    logits = model(ids)                       # (B, T, num_classes)

The book writes `model.out_head = torch.nn.Linear(emb_dim, num_classes)`; here the new weight
joins the model's flat buffer (as `score.weight` (num_classes, emb_dim) and `score.bias`, Hugging
Face's GPT2ForSequenceClassification names) and the model's out_head becomes a Linear over it.
"""
from scratchgpt.model import Linear


def add_classification_head(model, num_classes, seed=0):
    """A copy of `model` whose head is a fresh `score` (num_classes, emb_dim) + bias (GPT-2's init:
    N(0, 0.02) weight, zero bias); every other weight is copied."""
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    if model.extensions.get("num_classes"):
        raise ValueError(f"the model already has a classification head ({model.extensions['num_classes']} classes)")
    C = model.cfg.emb_dim
    new = model.with_extra_params({"score.weight": (num_classes, C), "score.bias": (num_classes,)})
    new._init_weights(seed, names=["score.weight", "score.bias"])
    new.out_head = Linear(new, "score.", transposed=True)        # (B, T, C) -> (B, T, num_classes)
    new.extensions["num_classes"] = int(num_classes)
    return new


def num_classes(model):
    """How many classes a classifier predicts; 0 for a language model."""
    return model.extensions.get("num_classes", 0)
