"""Loss of a model on a token stream: consecutive, non-overlapping windows, so the number
is deterministic and covers the text once (the building block of `scratchgpt eval`)."""
import numpy

from scratchgpt import backend


def evaluate_loss(model, data, batch_size=16, max_batches=None):
    """Mean next-token cross-entropy over windows data[i*T : i*T + T + 1], T = context_length."""
    T = model.cfg.context_length
    n_windows = (len(data) - 1) // T
    if n_windows < 1:
        raise ValueError(f"the text has {len(data)} tokens, too few for one window of {T + 1}")
    starts = numpy.arange(n_windows) * T
    if max_batches is not None:
        starts = starts[: max_batches * batch_size]
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with backend.inference():                       # no backward follows: keep no caches
            for i in range(0, len(starts), batch_size):
                s = starts[i:i + batch_size]
                rows = numpy.stack([numpy.asarray(data[j:j + T + 1], dtype=numpy.int64) for j in s])
                total += model.loss(rows[:, :-1], rows[:, 1:]) * len(s)
                count += len(s)
    finally:
        model.train(was_training)
    return total / count
