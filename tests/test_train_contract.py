"""Training contracts the loop must keep: gradient accumulation is one big batch split in
pieces, a real Ctrl-C (SIGINT) saves and exits 130, a NaN leaves the last checkpoint as it was."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from scratchgpt import checkpoint
from scratchgpt.data import BatchSampler
from scratchgpt.train import TrainConfig, train

TEXT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
        "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles. ") * 40


def config(tmp_path, **kw):
    f = tmp_path / "text.txt"
    f.write_text(TEXT)
    base = dict(text_file=str(f), n_layers=2, n_heads=2, emb_dim=16, context_length=8, batch_size=8,
                max_iters=6, eval_interval=6, eval_iters=1, sample_tokens=4, lr=3e-3, warmup_iters=2,
                out_dir=str(tmp_path / "run"), seed=0, dtype="float64")
    base.update(kw)
    return TrainConfig(**base)


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_grad_accum_k_of_batch_b_is_one_batch_of_k_times_b(tmp_path, monkeypatch, grad_clip):
    """--batch-size B --grad-accum k trains on the same rows, in the same order, as
    --batch-size kB --grad-accum 1, and ends with the same weights (float64, to rounding)."""
    monkeypatch.setenv("SCRATCHGPT_CACHE", str(tmp_path / "cache"))
    drawn = []
    plain_next = BatchSampler.next

    def recording_next(self):
        x, y = plain_next(self)
        drawn[-1].append(x)
        return x, y

    monkeypatch.setattr(BatchSampler, "next", recording_next)
    runs = {}
    for batch, accum in ((8, 1), (4, 2), (2, 4)):
        drawn.append([])
        cfg = config(tmp_path, batch_size=batch, grad_accum=accum, grad_clip=grad_clip,
                     out_dir=str(tmp_path / f"b{batch}x{accum}"))
        train(cfg, progress=False, log=lambda *a: None)
        runs[batch, accum] = cfg.out_dir
        rows = np.concatenate(drawn[-1])
        assert rows.shape == (6 * 8, 8)                      # 6 steps of 8 rows each
        np.testing.assert_array_equal(rows, np.concatenate(drawn[0]))
    ref = checkpoint.load(os.path.join(runs[8, 1], "ckpt_latest.npz"))
    for key, out_dir in runs.items():
        ck = checkpoint.load(os.path.join(out_dir, "ckpt_latest.npz"))
        for name, w in ref.model.state_dict().items():
            np.testing.assert_allclose(ck.model.state_dict()[name], w, rtol=1e-11, atol=1e-13,
                                       err_msg=f"{key}: {name}")
        np.testing.assert_allclose(ck.optimizer_state["v"], ref.optimizer_state["v"], rtol=1e-9, atol=1e-20)
        # the logged gradient norm is the norm of the averaged gradient, whatever k is
        assert metrics(out_dir)[-1]["grad_norm"] == pytest.approx(metrics(runs[8, 1])[-1]["grad_norm"], rel=1e-9)


def scratchgpt_command():
    """The installed `scratchgpt` script next to this Python (what a user types)."""
    path = os.path.join(os.path.dirname(sys.executable), "scratchgpt")
    assert os.path.exists(path), f"the scratchgpt command is not installed beside {sys.executable}"
    return path


def test_a_real_sigint_saves_a_clean_checkpoint_exits_130_and_resume_continues(tmp_path):
    (tmp_path / "text.txt").write_text(TEXT)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", SCRATCHGPT_CACHE=str(tmp_path / "cache"))
    common = ["--out-dir", "run", "--no-progress"]
    proc = subprocess.Popen([scratchgpt_command(), "train", "--text-file", "text.txt", "--n-layers", "1",
                             "--n-heads", "2", "--emb-dim", "16", "--context-length", "8", "--batch-size", "4",
                             "--max-iters", "1000000", "--eval-interval", "100000", "--eval-iters", "1",
                             "--sample-tokens", "4", *common], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:                       # the first evaluation's progress line
            if line.startswith("iter 0:"):
                break
        else:
            pytest.fail(f"no progress line; stderr: {proc.stderr.read()}")
        time.sleep(1.0)                                # some training steps (on a slow machine, maybe none)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "stopping after this step" in out and "interrupted at iteration" in out
    assert "Traceback" not in err
    ck = checkpoint.load(str(tmp_path / "run" / "ckpt_latest.npz"))
    stopped = ck.train_state["iter"]
    assert ck.optimizer_state["t"] == stopped                          # saved after a whole step
    assert [r["iter"] for r in metrics(tmp_path / "run")] == [0]
    res = subprocess.run([scratchgpt_command(), "train", "--resume", "--max-iters", str(stopped + 3), *common],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"resuming run at iteration {stopped}" in res.stdout
    ck = checkpoint.load(str(tmp_path / "run" / "ckpt_latest.npz"))
    assert ck.train_state["iter"] == stopped + 3 and ck.optimizer_state["t"] == stopped + 3
    assert [r["iter"] for r in metrics(tmp_path / "run")] == [0, stopped + 3]


def test_a_nan_stop_leaves_the_last_checkpoint_byte_for_byte(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHGPT_CACHE", str(tmp_path / "cache"))
    cfg = config(tmp_path, max_iters=30, eval_interval=1000, lr=1e30, grad_clip=0.0, lr_schedule="constant",
                 dtype="float32")
    latest = os.path.join(cfg.out_dir, "ckpt_latest.npz")
    saved = []                                           # the bytes of ckpt_latest.npz after each save
    plain_save = checkpoint.save

    def recording_save(path, *args, **kw):
        plain_save(path, *args, **kw)
        if os.path.basename(path) == "ckpt_latest.npz":
            saved.append(open(path, "rb").read())

    monkeypatch.setattr(checkpoint, "save", recording_save)
    with pytest.raises(FloatingPointError, match=r"at iteration [1-9].*nothing was saved"):
        with np.errstate(all="ignore"):
            train(cfg, progress=False, log=lambda *a: None)
    assert len(saved) == 1                               # the evaluation at iteration 0
    assert open(latest, "rb").read() == saved[0]
    assert checkpoint.load(latest).train_state["iter"] == 0


def test_resume_and_init_from_together_are_refused(tmp_path):
    res = subprocess.run([scratchgpt_command(), "train", "--resume", "--init-from", "other", "--out-dir", "run"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--resume and --init-from exclude each other" in res.stderr


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("grad_clip,grad_accum", [(0.0, 1), (0.0, 3), (0.5, 2), (1e-3, 1)])
def test_one_training_step_is_the_mean_loss_clipped_then_adamw(grad_clip, grad_accum, graph):
    """train._step by hand: grad_accum micro-batches, gradients averaged, clipped to grad_clip
    (0 = no clipping), one AdamW step at the given lr; it returns the mean micro-batch loss.
    graph=True: each micro-batch goes through a `graph` callable, as a CUDA graph's replay
    (scratchgpt/cuda_graph.py) on a GPU; here an eager stand-in that counts its calls."""
    import scratchgpt as sg
    from scratchgpt.optim import AdamW, clip_grad_norm
    from scratchgpt.tokenizer import CharTokenizer
    from scratchgpt.train import _make_optimizer, _step
    tok = CharTokenizer.from_text(TEXT)
    data = np.asarray(tok.encode(TEXT))
    cfg = TrainConfig(text_file="unused.txt", n_layers=1, n_heads=2, emb_dim=16, context_length=8, batch_size=4,
                      grad_accum=grad_accum, grad_clip=grad_clip, dtype="float64")
    mcfg = cfg.model_config(tok.vocab_size)
    ours, ref = sg.GPTModel(mcfg, seed=0, dtype="float64"), sg.GPTModel(mcfg, seed=0, dtype="float64")
    opt, opt_ref = _make_optimizer(ours, cfg), AdamW(ref, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                                      weight_decay=cfg.weight_decay)
    sampler, sampler_ref = BatchSampler(data, 4, 8, seed=3), BatchSampler(data, 4, 8, seed=3)
    calls = []

    def replay(x, y):                                      # what GraphStep does, eagerly
        calls.append(x.shape)
        value = ours.loss(x, y)
        ours.backward()
        return value
    loss = _step(ours, opt, sampler, cfg, lr=2e-2, graph=replay if graph else None)
    assert calls == ([(4, 8)] * grad_accum if graph else [])
    ref.zero_grad()
    losses = []
    for _ in range(grad_accum):
        x, y = sampler_ref.next()
        losses.append(ref.loss(x, y))
        ref.backward()
    ref.flat_grads /= grad_accum
    norm = clip_grad_norm(ref, grad_clip if grad_clip > 0 else float("inf"))
    if grad_clip:
        assert norm > grad_clip                            # so clipping really happens here
    opt_ref.lr = 2e-2
    opt_ref.step()
    assert loss == pytest.approx(np.mean(losses), rel=1e-12)
    assert float(opt.last_grad_norm) == pytest.approx(float(norm), rel=1e-12)
    np.testing.assert_allclose(ours.flat_params, ref.flat_params, rtol=1e-12, atol=1e-15)


def test_a_run_started_with_init_from_resumes_bit_exactly(tmp_path, monkeypatch):
    """--init-from starts run B from run A's weights; B interrupted and resumed with --resume ends
    where an uninterrupted B ends (weights, optimizer, logs)."""
    from scratchgpt.train import TrainingInterrupted
    monkeypatch.setenv("SCRATCHGPT_CACHE", str(tmp_path / "cache"))
    quiet = dict(progress=False, log=lambda *a: None)
    a = config(tmp_path, out_dir=str(tmp_path / "a"), max_iters=4, eval_interval=4)
    train(a, **quiet)
    kw = dict(max_iters=8, eval_interval=4, init_from=a.out_dir, drop_rate=0.1, lr=1e-3)
    whole = config(tmp_path, out_dir=str(tmp_path / "whole"), **kw)
    model = train(whole, **quiet)["model"].train()
    x = np.zeros((1, 8), dtype=np.int64)
    assert not np.array_equal(model(x), model(x))          # --drop-rate 0.1 is on in the new run
    parts = config(tmp_path, out_dir=str(tmp_path / "parts"), **kw)
    with pytest.raises(TrainingInterrupted):
        train(parts, stop_after=6, **quiet)
    train(config(tmp_path, out_dir=str(tmp_path / "parts"), max_iters=8), resume=True, **quiet)
    wa = checkpoint.load(os.path.join(whole.out_dir, "ckpt_latest.npz"))
    wb = checkpoint.load(os.path.join(parts.out_dir, "ckpt_latest.npz"))
    for k, v in wa.model.state_dict().items():
        np.testing.assert_array_equal(wb.model.state_dict()[k], v, err_msg=k)
    np.testing.assert_array_equal(wb.optimizer_state["v"], wa.optimizer_state["v"])
    assert wb.optimizer_state["t"] == 8
    strip = lambda rows: [(r["iter"], r["train_loss"], r["val_loss"]) for r in rows]
    assert strip(metrics(parts.out_dir)) == strip(metrics(whole.out_dir))


@pytest.mark.parametrize("zero1,shares", [(False, [0.5, 0.0, 0.25, 0.75]), (True, [0.5, 0.0, 0.25, 0.75]),
                                          (False, [0.0, 0.0])])
def test_a_ranks_micro_batches_are_weighted_by_their_shares(zero1, shares):
    """Data parallel, as one rank sees it: micro-batch k's gradient and loss count with the rank's
    share s_k of that micro-batch's targets, and a share of 0 (every target of the rank ignored)
    adds nothing and goes on to the next micro-batch: flat_grads = sum_k s_k g_k / grad_accum and
    the loss returned is sum_k s_k loss_k / grad_accum. In a world of one that reports the shares of
    a larger world's rank; with ZeRO-1's optimizer too (over MPI's COMM_SELF)."""
    import scratchgpt as sg
    from scratchgpt import distributed
    from scratchgpt.optim import AdamW, clip_grad_norm
    from scratchgpt.tokenizer import CharTokenizer
    from scratchgpt.train import _step

    class ShareWorld(distributed.World):
        def __init__(self, shares):
            super().__init__()
            self.shares = list(shares)

        def share(self, targets, ignore_index=-100):
            return self.shares.pop(0)

    tok = CharTokenizer.from_text(TEXT)
    data = np.asarray(tok.encode(TEXT))
    cfg = TrainConfig(text_file="unused.txt", n_layers=1, n_heads=2, emb_dim=16, context_length=8, batch_size=4,
                      grad_accum=len(shares), grad_clip=0.2, dtype="float64")
    mcfg = cfg.model_config(tok.vocab_size)
    ours, ref, scratch = (sg.GPTModel(mcfg, seed=0, dtype="float64") for _ in range(3))
    kw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    if zero1:                                              # ZeRO-1 over MPI's world of this process alone
        MPI = pytest.importorskip("mpi4py.MPI", reason="the [mpi] extra (README's test command installs it)")
        opt = distributed.ZeroAdamW(ours, distributed.World(MPI.COMM_SELF), **kw)
    else:
        opt = AdamW(ours, **kw)
    sampler, sampler_ref = BatchSampler(data, 4, 8, seed=3), BatchSampler(data, 4, 8, seed=3)
    loss = _step(ours, opt, sampler, cfg, lr=2e-2, world=ShareWorld(shares))
    ref.zero_grad()
    total = 0.0
    for s in shares:
        x, y = sampler_ref.next()                          # drawn for every micro-batch, counted or not
        if s == 0:
            continue
        scratch.zero_grad()
        total += s * scratch.loss(x, y)
        scratch.backward()
        ref.flat_grads += s * scratch.flat_grads
    ref.flat_grads /= len(shares)
    norm = clip_grad_norm(ref, cfg.grad_clip)
    assert norm > cfg.grad_clip or not any(shares)         # clipping happens (with some targets)
    opt_ref = AdamW(ref, **kw)
    opt_ref.lr = 2e-2
    opt_ref.step()
    assert loss == pytest.approx(total / len(shares), rel=1e-12)
    assert float(opt.last_grad_norm) == pytest.approx(float(norm), rel=1e-12)
    np.testing.assert_allclose(ours.flat_params, ref.flat_params, rtol=1e-12, atol=1e-15)
