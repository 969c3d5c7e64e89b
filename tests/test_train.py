"""Training: the loss falls, resume is bit-exact, interruption keeps work, schedules match torch."""
import json

import numpy as np
import pytest
import torch

from scratchgpt import checkpoint, schedules
from scratchgpt.train import TrainConfig, TrainingInterrupted, train

TEXT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
        "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles. ") * 40


def config(tmp_path, **kw):
    f = tmp_path / "text.txt"
    f.write_text(TEXT)
    base = dict(text_file=str(f), n_layers=2, n_heads=2, emb_dim=32, context_length=16, batch_size=8,
                max_iters=60, eval_interval=20, eval_iters=4, sample_tokens=20, lr=3e-3, warmup_iters=5,
                out_dir=str(tmp_path / "run"), seed=0)
    base.update(kw)
    return TrainConfig(**base)


def metrics(out_dir):
    with open(f"{out_dir}/metrics.jsonl") as f:
        return [json.loads(l) for l in f]


def test_a_short_run_lowers_the_loss_and_writes_its_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHGPT_CACHE", str(tmp_path / "cache"))
    cfg = config(tmp_path)
    res = train(cfg, progress=False, log=lambda *a: None)
    rows = metrics(cfg.out_dir)
    assert [r["iter"] for r in rows] == [0, 20, 40, 60]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5
    for key in ("iter", "train_loss", "val_loss", "lr", "elapsed_s", "tokens_per_s"):
        assert key in rows[-1]
    samples = open(f"{cfg.out_dir}/samples.txt").read()
    assert samples.count("=== iter ") == 4
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["iter_000000.npz", "iter_000020.npz", "iter_000040.npz", "iter_000060.npz"]
    assert res["val_loss"] == rows[-1]["val_loss"]


@pytest.mark.parametrize("drop_rate,grad_accum", [(0.0, 1), (0.1, 2)])
def test_resume_is_bit_exact(tmp_path, monkeypatch, drop_rate, grad_accum):
    monkeypatch.setenv("SCRATCHGPT_CACHE", str(tmp_path / "cache"))
    a = config(tmp_path, out_dir=str(tmp_path / "a"), max_iters=40, drop_rate=drop_rate, grad_accum=grad_accum)
    b = config(tmp_path, out_dir=str(tmp_path / "b"), max_iters=40, drop_rate=drop_rate, grad_accum=grad_accum)
    train(a, progress=False, log=lambda *x: None)
    with pytest.raises(TrainingInterrupted):
        train(b, progress=False, log=lambda *x: None, stop_after=27)   # stops between evaluations
    assert checkpoint.load(f"{b.out_dir}/ckpt_latest.npz").train_state["iter"] == 27
    train(b, resume=True, progress=False, log=lambda *x: None)
    pa = checkpoint.load(f"{a.out_dir}/ckpt_latest.npz")
    pb = checkpoint.load(f"{b.out_dir}/ckpt_latest.npz")
    for k, v in pa.model.state_dict().items():
        np.testing.assert_array_equal(v, pb.model.state_dict()[k], err_msg=k)
    strip = lambda rows: [{k: r[k] for k in ("iter", "train_loss", "val_loss", "lr", "grad_norm")} for r in rows]
    assert strip(metrics(a.out_dir)) == strip(metrics(b.out_dir))


def test_resume_after_a_stop_exactly_at_an_evaluation(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHGPT_CACHE", str(tmp_path / "cache"))
    a = config(tmp_path, out_dir=str(tmp_path / "a"), max_iters=40)
    b = config(tmp_path, out_dir=str(tmp_path / "b"), max_iters=40)
    train(a, progress=False, log=lambda *x: None)
    with pytest.raises(TrainingInterrupted):
        train(b, progress=False, log=lambda *x: None, stop_after=20)
    train(b, resume=True, progress=False, log=lambda *x: None)
    assert [r["val_loss"] for r in metrics(a.out_dir)] == [r["val_loss"] for r in metrics(b.out_dir)]
    assert open(f"{a.out_dir}/samples.txt").read() == open(f"{b.out_dir}/samples.txt").read()


def test_init_from_starts_a_new_run_from_old_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHGPT_CACHE", str(tmp_path / "cache"))
    a = config(tmp_path, out_dir=str(tmp_path / "a"), max_iters=40)
    train(a, progress=False, log=lambda *x: None)
    b = config(tmp_path, out_dir=str(tmp_path / "b"), max_iters=0, init_from=a.out_dir)
    train(b, progress=False, log=lambda *x: None)
    wa = checkpoint.load(f"{a.out_dir}/ckpt_latest.npz").model.state_dict()
    wb = checkpoint.load(f"{b.out_dir}/checkpoints/iter_000000.npz").model.state_dict()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])
    assert checkpoint.load(f"{b.out_dir}/ckpt_latest.npz").optimizer_state["t"] == 0   # fresh optimizer


def test_nan_loss_stops_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHGPT_CACHE", str(tmp_path / "cache"))
    cfg = config(tmp_path, lr=1e30, grad_clip=0.0, lr_schedule="constant", max_iters=30)
    with pytest.raises(FloatingPointError, match="training loss became nan"):
        with np.errstate(all="ignore"):
            train(cfg, progress=False, log=lambda *x: None)


def test_schedules_match_torch():
    def torch_lrs(make_sched, n):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        sched = make_sched(opt)
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    n = 120
    ms = torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[30, 60, 90], gamma=0.5), n)
    assert np.allclose(ms, [schedules.multistep(i, 0.1, [30, 60, 90], 0.5) for i in range(n)], rtol=1e-12)
    const = torch_lrs(lambda o: torch.optim.lr_scheduler.ConstantLR(o, factor=1.0, total_iters=0), n)
    assert np.allclose(const, [schedules.constant(i, 0.1) for i in range(n)])
    # warmup (linear from lr/warmup to lr) then cosine to min_lr, as torch's LambdaLR of the same formula
    # and as CosineAnnealingLR after the warmup
    warm, min_lr = 10, 0.01
    cos = torch_lrs(lambda o: torch.optim.lr_scheduler.SequentialLR(o, [
        torch.optim.lr_scheduler.LinearLR(o, start_factor=1 / warm, end_factor=1.0, total_iters=warm - 1),
        torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=n - warm, eta_min=min_lr)], milestones=[warm]), n)
    ours = [schedules.warmup_cosine(i, 0.1, warm, n, min_lr) for i in range(n)]
    assert np.allclose(cos, ours, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("spec,vocab", [("bpe:300", 300), ("gpt2", 50257)])
def test_bpe_tokenizers_train_and_are_saved_in_the_checkpoint(tmp_path, monkeypatch, spec, vocab):
    monkeypatch.setenv("SCRATCHGPT_CACHE", str(tmp_path / "cache"))
    cfg = config(tmp_path, tokenizer=spec, max_iters=4, eval_interval=2, emb_dim=16, sample_prompt="To be")
    train(cfg, progress=False, log=lambda *x: None)
    ck = checkpoint.load(f"{cfg.out_dir}/ckpt_latest.npz")
    assert ck.model.cfg.vocab_size == vocab and ck.tokenizer.vocab_size == vocab
    assert ck.tokenizer.decode(ck.tokenizer.encode("To be, or not")) == "To be, or not"
    assert metrics(cfg.out_dir)[-1]["val_loss"] < metrics(cfg.out_dir)[0]["val_loss"]
