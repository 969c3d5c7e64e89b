"""Learning-rate schedules: lr as a function of the iteration number (0-based)."""
import math


def constant(it, lr):
    return lr


def multistep(it, lr, milestones, gamma=0.1):
    """torch's MultiStepLR: multiply by gamma at every milestone passed."""
    return lr * gamma ** sum(1 for m in milestones if it >= m)


def warmup_cosine(it, lr, warmup_iters, max_iters, min_lr):
    """Linear warmup from 0 to lr over warmup_iters, then cosine decay to min_lr at max_iters."""
    if it < warmup_iters:
        return lr * (it + 1) / warmup_iters
    if it >= max_iters:
        return min_lr
    progress = (it - warmup_iters) / max(1, max_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def get_lr(schedule, it, lr, *, max_iters=None, warmup_iters=0, min_lr=0.0,
           milestones=(), gamma=0.1):
    """The lr of `schedule` ('constant' | 'multistep' | 'cosine') at iteration `it`."""
    if schedule == "constant":
        return constant(it, lr)
    if schedule == "multistep":
        return multistep(it, lr, milestones, gamma)
    if schedule == "cosine":
        return warmup_cosine(it, lr, warmup_iters, max_iters, min_lr)
    raise ValueError(f"unknown lr schedule {schedule!r}: use constant, multistep or cosine")
