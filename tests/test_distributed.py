"""Data-parallel training over MPI: `mpiexec -n 2 scratchgpt train` follows one process at the
same global batch, writes its run folder once, resumes, and fails as one job.

Needs the `mpi` extra (mpi4py and the mpich wheel, whose mpiexec lands next to python); CI
installs it, so there these tests run. Elsewhere they skip with the reason.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from scratchgpt import checkpoint, distributed

MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")
if not os.path.exists(MPIEXEC) or distributed.launched_size() != 1:
    if os.environ.get("CI"):
        raise RuntimeError(f"CI installs the mpi extra, but {MPIEXEC} is missing")
    pytest.skip("no mpiexec beside python: pip install -e '.[mpi]'", allow_module_level=True)

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 30
TINY = ["--text-file", "tiny.txt", "--n-layers", "2", "--n-heads", "2", "--emb-dim", "16",
        "--context-length", "16", "--batch-size", "4", "--eval-iters", "2", "--sample-tokens", "10",
        "--lr", "3e-3", "--warmup-iters", "3", "--no-progress"]


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "tiny.txt").write_text(TEXT)
    return tmp_path


def env_for(cwd):
    return dict(os.environ, SCRATCHGPT_CACHE=str(cwd / "cache"))


def train(cwd, *args, n=1, timeout=120):
    """`scratchgpt train` in one process (n=1) or under `mpiexec -n n`."""
    cmd = [sys.executable, "-m", "scratchgpt", "train", *TINY, *args]
    if n > 1:
        cmd = [MPIEXEC, "-n", str(n), *cmd]
    return subprocess.run(cmd, cwd=cwd, env=env_for(cwd), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def metrics(run):
    return [json.loads(l) for l in open(run / "metrics.jsonl")]


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def assert_same_run(a, b, tol):
    """Every logged loss and grad norm, and the final weights, within tol relative."""
    ra, rb = metrics(a), metrics(b)
    assert [r["iter"] for r in ra] == [r["iter"] for r in rb]
    for x, y in zip(ra, rb):
        for key in ("train_loss", "val_loss", "grad_norm", "lr"):
            if y[key] is not None:
                assert rel(x[key], y[key]) <= tol, (key, x, y)
    wa = checkpoint.load(str(a / "ckpt_latest.npz")).model.state_dict()
    wb = checkpoint.load(str(b / "ckpt_latest.npz")).model.state_dict()
    for k in wb:
        assert rel(wa[k], wb[k]) <= tol, k


@pytest.mark.parametrize("dtype,tol,zero1", [("float64", 1e-9, False), ("float32", 1e-4, False),
                                             ("float64", 1e-9, True)])
def test_two_processes_follow_one_process_at_the_same_global_batch(folder, dtype, tol, zero1):
    # dropout on: each rank draws its rows of the masks one process draws for the whole batch
    args = ["--max-iters", "12", "--eval-interval", "6", "--grad-accum", "2", "--drop-rate", "0.1",
            "--dtype", dtype]
    one = train(folder, *args, "--out-dir", "one")
    two = train(folder, *args, "--out-dir", "two", *(["--zero1"] if zero1 else []), n=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert_same_run(folder / "two", folder / "one", tol)
    rows = metrics(folder / "two")
    assert [r["iter"] for r in rows] == [0, 6, 12]                 # written once, not once per rank
    assert {r["world_size"] for r in rows} == {2}
    assert {r["world_size"] for r in metrics(folder / "one")} == {1}
    assert open(folder / "two" / "samples.txt").read().count("=== iter ") == 3
    assert sorted(os.listdir(folder / "two" / "checkpoints")) == [
        "iter_000000.npz", "iter_000006.npz", "iter_000012.npz"]
    assert two.stdout.count("done: 12 iterations") == 1             # rank 0 alone prints


@pytest.mark.parametrize("zero1", [False, True])
def test_a_resumed_mpiexec_run_equals_an_uninterrupted_one(folder, zero1):
    # dropout on, so the dropout generator must come back from the checkpoint
    args = ["--max-iters", "12", "--eval-interval", "5", "--drop-rate", "0.1", "--dtype", "float64",
            *(["--zero1"] if zero1 else [])]
    full = train(folder, *args, "--out-dir", "full", n=2)
    assert full.returncode == 0, full.stderr
    stop = textwrap.dedent(f"""
        import sys
        from scratchgpt.cli import build_parser
        from scratchgpt.train import TrainConfig, TrainingInterrupted, train
        a = build_parser().parse_args(sys.argv[1:])
        cfg = TrainConfig(**{{k: v for k, v in vars(a).items() if k in TrainConfig.__dataclass_fields__
                             and k != "milestones"}})
        try:
            train(cfg, progress=False, stop_after=7)
        except TrainingInterrupted:
            pass
    """)
    p = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", stop, "train", *TINY, *args,
                        "--out-dir", "part"], cwd=folder, env=env_for(folder), capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert p.returncode == 0, p.stderr
    state = checkpoint.load(str(folder / "part" / "ckpt_latest.npz")).train_state
    assert state["iter"] == 7 and state["world_size"] == 2
    shutil.copytree(folder / "part", folder / "part-one")
    resumed = train(folder, *args, "--out-dir", "part", "--resume", n=2)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(folder / "part", folder / "full", 0.0)          # bit-exact
    # one process can take over the run too (same batches, same dropout masks)
    one = train(folder, *args, "--out-dir", "part-one", "--resume")
    assert one.returncode == 0, one.stderr
    assert_same_run(folder / "part-one", folder / "full", 1e-9)


SAME_WEIGHTS = """
import hashlib
from scratchgpt import distributed
from scratchgpt.train import TrainConfig, train
cfg = TrainConfig(text_file="tiny.txt", n_layers=2, n_heads=2, emb_dim=16, context_length=16, batch_size=6,
                  max_iters=10, eval_interval=10, eval_iters=2, sample_tokens=5, out_dir="same", drop_rate=0.1)
res = train(cfg, progress=False, log=lambda *a: None)
digests = distributed.world().comm.gather(hashlib.sha256(res["model"].flat_params.tobytes()).hexdigest())
if digests:
    print(len(set(digests)), "distinct of", len(digests))
"""


def test_every_rank_ends_with_bit_identical_weights_also_for_three(folder):
    # nothing re-sends the weights: the ranks stay equal only if every one gets the same sums
    p = subprocess.run([MPIEXEC, "-n", "3", sys.executable, "-c", SAME_WEIGHTS], cwd=folder,
                       env=env_for(folder), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["1", "distinct", "of", "3"]


def test_a_batch_that_does_not_split_over_the_processes_is_a_clear_error(folder):
    p = train(folder, "--max-iters", "2", "--batch-size", "5", "--out-dir", "odd", n=2, timeout=60)
    assert p.returncode == 2
    assert p.stderr.count("--batch-size 5 does not split over 2 processes: use a multiple of 2") == 1


def test_an_error_every_rank_hits_is_reported_once(folder):
    p = train(folder, "--resume", "--out-dir", "nothing-here", n=2, timeout=60)
    assert p.returncode == 2
    assert p.stderr.count("error: no checkpoint at nothing-here/ckpt_latest.npz") == 1, p.stderr


def children(pid):
    """Every process below pid (read from /proc)."""
    kids = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def rank_pid(launcher, rank):
    for pid in children(launcher.pid):
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"PMI_RANK={rank}".encode() in env and b"scratchgpt" in open(f"/proc/{pid}/cmdline", "rb").read():
            return pid
    return None


def start_long_run(folder, out_dir):
    """A 2-rank run long enough to be stopped; returns once it has logged its first evaluation."""
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "scratchgpt", "train", *TINY, "--max-iters", "100000",
           "--eval-interval", "50000", "--out-dir", out_dir]
    p = subprocess.Popen(cmd, cwd=folder, env=env_for(folder), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (folder / out_dir / "metrics.jsonl").exists():
        assert p.poll() is None and time.time() < deadline, p.communicate()
        time.sleep(0.1)
    time.sleep(0.5)                                           # into the training steps
    return p


def test_killing_one_rank_ends_the_others(folder):
    p = start_long_run(folder, "killed")
    victim = rank_pid(p, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    t = time.time()
    try:
        p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0
    assert time.time() - t < 10
    assert checkpoint.load(str(folder / "killed" / "ckpt_latest.npz")).train_state["iter"] == 0


def test_ctrl_c_on_the_launcher_stops_every_rank_and_saves(folder):
    p = start_long_run(folder, "stopped")
    p.send_signal(signal.SIGINT)                              # mpiexec passes it to every rank
    t = time.time()
    try:
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    assert time.time() - t < 10
    assert p.returncode == 130, err
    stopped_at = checkpoint.load(str(folder / "stopped" / "ckpt_latest.npz")).train_state["iter"]
    assert stopped_at > 0 and out.count(f"interrupted at iteration {stopped_at}") == 1


FAIL_ON_RANK_1 = """
import sys
from scratchgpt import cli, distributed, train
step = train._step
def failing_step(model, opt, sampler, cfg, lr, world, *rest):
    if world.rank == 1 and sampler.batches_drawn == 3:
        raise ValueError("rank 1 cannot go on")
    return step(model, opt, sampler, cfg, lr, world, *rest)
train._step = failing_step
sys.exit(cli.main(sys.argv[1:]))
"""


def test_an_error_on_one_rank_ends_every_rank_with_one_line(folder):
    t = time.time()
    p = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", FAIL_ON_RANK_1, "train", *TINY,
                        "--max-iters", "100000", "--eval-interval", "50000", "--out-dir", "failed"],
                       cwd=folder, env=env_for(folder), capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=60)
    assert p.returncode == 2 and time.time() - t < 30
    assert p.stderr.count("error: rank 1 cannot go on (rank 1)") == 1, p.stderr


GRADIENT_CHECK = """
import copy, numpy as np
from scratchgpt import GPTConfig, GPTModel, distributed
from scratchgpt.optim import AdamW
from scratchgpt.train import TrainConfig, _step

class Batches:                         # two fixed micro-batches with uneven ignored targets
    def __init__(self, batches): self.batches = list(batches)
    def next(self): return self.batches.pop(0)

rng = np.random.default_rng(0)
x = rng.integers(0, 11, size=(2, 4, 6)); y = rng.integers(0, 11, size=(2, 4, 6))
y[0, :2, 1:] = -100                    # micro-batch 0: rank 0's rows hold 2 targets, rank 1's 12
y[1, 2:, :4] = -100                    # micro-batch 1: rank 0's 12, rank 1's 4
cfg = TrainConfig(batch_size=4, grad_accum=2, grad_clip=1e9)
model = GPTModel(GPTConfig(vocab_size=11, context_length=6, emb_dim=8, n_heads=2, n_layers=1), dtype="float64")
one = copy.deepcopy(model)
world = distributed.world()
loss = world.sum_floats(_step(model, AdamW(model), Batches(zip(x, y)), cfg, 1e-3, world))[0]
if world.rank == 0:
    ref = _step(one, AdamW(one), Batches(zip(x, y)), cfg, 1e-3, distributed.World())
    scale = np.abs(one.flat_grads).max()
    print("loss", abs(loss - ref) / ref, "grad", np.abs(model.flat_grads - one.flat_grads).max() / scale,
          "weights", np.abs(model.flat_params - one.flat_params).max())
"""


def test_ignored_targets_are_weighted_so_the_gradient_is_the_whole_batch_mean(folder):
    p = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", GRADIENT_CHECK], cwd=folder,
                       env=env_for(folder), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    words = p.stdout.split()
    errors = dict(zip(words[::2], map(float, words[1::2])))
    assert set(errors) == {"loss", "grad", "weights"}
    assert max(errors.values()) < 1e-12, errors


def test_under_mpiexec_each_rank_gets_its_share_of_the_cores(monkeypatch):
    names = distributed.THREAD_VARS + distributed.SIZE_VARS + distributed.LOCAL_SIZE_VARS
    for name in names:                        # recorded, so the test leaves the environment as it was
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    distributed.share_cores_between_ranks()
    assert not any(v in os.environ for v in distributed.THREAD_VARS)          # one process: untouched
    monkeypatch.setenv("PMI_SIZE", "4")
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")                                 # 2 of the 4 on this machine
    distributed.share_cores_between_ranks()
    assert [os.environ[v] for v in distributed.THREAD_VARS] == ["4"] * len(distributed.THREAD_VARS)
    for v in distributed.THREAD_VARS:
        monkeypatch.delenv(v)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")                                 # the user's choice wins
    distributed.share_cores_between_ranks()
    assert os.environ["OMP_NUM_THREADS"] == "3" and "OPENBLAS_NUM_THREADS" not in os.environ
