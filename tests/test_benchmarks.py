"""benchmarks/compare.py's machinery: a side in a worker process of its own answers timing
requests, and alternate() takes medians of both sides. Only our side runs here (a few steps of
the tiny model); the numbers themselves are the benchmark's business, not the tests'."""
import argparse
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture(scope="module")
def compare():
    sys.path.insert(0, BENCH)
    try:
        import compare
        yield compare
    finally:
        sys.path.remove(BENCH)


def test_a_worker_process_times_our_training_step_and_profiles_it(compare):
    w = compare.Worker("ours", "tiny", threads=1, gen_tokens=3)
    try:
        seconds, faults = w.call("train")
        assert 1e-4 < seconds < 30 and isinstance(faults, int) and faults >= 0   # a step of a tiny model
        rows, total = w.call("profile", repeats=2)
        assert 1e-4 < total < 30
        for name in ("attention forward", "AdamW step", "zero_grad"):
            assert 0 < rows[name] < total, (name, rows[name], total)             # a part of the step
        seconds, _ = w.call("generate", settle=0)
        assert 1e-5 < seconds < 30
    finally:
        w.close()
    assert w.p.returncode == 0


def test_alternate_swaps_the_first_runner_each_round_and_takes_medians(compare):
    order = []

    def side(name, values):
        it = iter(values)
        return lambda: (order.append(name), (next(it), 0))[1]

    medians = compare.alternate(side("o", [9, 1, 2, 3]), side("t", [9, 5, 6, 7]), repeats=3, warmup=1)
    assert order == ["o", "t", "o", "t", "t", "o", "o", "t"]        # warm-up, then o t, t o, o t
    assert medians == ((2, 0), (6, 0))


def test_the_recipe_benchmark_runs_both_sides_on_the_same_batches(tmp_path):
    """benchmarks/recipe.py: ours and torch start from the same weights and see the same batches,
    so after a few steps their validation losses agree to float32 rounding."""
    sys.path.insert(0, BENCH)
    try:
        import recipe
    finally:
        sys.path.remove(BENCH)
    a = argparse.Namespace(max_iters=4, eval_iters=2, seed=3, threads=1, out_dir=str(tmp_path / "r"),
                           no_cli=True, side=None)
    ours, torch_ = recipe.side(a, "ours"), recipe.side(a, "torch")
    assert abs(ours["val_loss"] - torch_["val_loss"]) < 1e-4, (ours, torch_)
    assert ours["val_loss"] < 4.3                      # ln(65) = 4.17 at the start: it trained
    for r in (ours, torch_):
        assert r["step_s"] > 0 and r["eval_s"] > 0 and r["wall_s"] >= r["step_s"] + r["eval_s"]


def test_llama_row_compares_the_same_model_on_both_sides(compare):
    """benchmarks/torch_llama.py's TorchLlama with our Llama3Model's weights gives our logits and
    generates as many tokens: the llama row times the same math on both sides. (compare.Torch is
    not built here: in the test process `torch_gpt` is tests/torch_gpt.py, not the benchmark's.)"""
    import numpy as np
    import torch
    sys.path.insert(0, BENCH)
    try:
        import torch_llama
    finally:
        sys.path.remove(BENCH)
    ours = compare.Ours(compare.CONFIGS["llama"])
    ref = torch_llama.TorchLlama(ours.model.cfg)
    P = ours.model.params
    with torch.no_grad():
        ref.emb.weight.copy_(torch.from_numpy(P["model.embed_tokens.weight"]))
        ref.norm.copy_(torch.from_numpy(P["model.norm.weight"]))
        for i, b in enumerate(ref.blocks):
            h = f"model.layers.{i}."
            pairs = [(b.norm1, "input_layernorm.weight"), (b.norm2, "post_attention_layernorm.weight"),
                     (b.q.weight, "self_attn.q_proj.weight"), (b.k.weight, "self_attn.k_proj.weight"),
                     (b.v.weight, "self_attn.v_proj.weight"), (b.o.weight, "self_attn.o_proj.weight"),
                     (b.gate.weight, "mlp.gate_proj.weight"), (b.up.weight, "mlp.up_proj.weight"),
                     (b.down.weight, "mlp.down_proj.weight")]
            for t, name in pairs:
                t.copy_(torch.from_numpy(P[h + name]))
        theirs = ref(torch.from_numpy(ours.x[:2])).numpy()
        generated = torch_llama.torch_llama_generate(ref, torch.from_numpy(ours.prompt), 3)
    np.testing.assert_allclose(ours.model(ours.x[:2]), theirs, rtol=1e-4, atol=1e-4)
    assert tuple(generated.shape) == (1, compare.PROMPT_LEN + 3) == ours.generate(3).shape
    ours.train_step()
