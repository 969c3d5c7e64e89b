#!/usr/bin/env bash
# Issue 20's checks on a machine with an NVIDIA GPU, in one run (sized for < 8 minutes on an H200):
#   1. versions of the stack (driver, CUDA, NumPy, CuPy, numba, numba-cuda, torch)
#   2. the install (editable, so kernels/ is scratchgpt.kernels) and kernels.cuda.available()
#   3. the GPU tests: tests/test_gpu.py, test_kernels_cuda.py, test_kernels_cuda_available.py,
#      test_precision.py
#   4. the command line on CuPy: train with dropout, eagerly and with --cuda-graph (the same losses);
#      a --cuda-graph run stopped by Ctrl-C (SIGINT) and resumed, compared bit for bit with the
#      uninterrupted one; sample and eval in fp32, tf32 and bf16; the GPU run sampled on the CPU;
#      finetune-cls, finetune-sft and chat on CuPy
#   5. precision: a tiny model's loss curve in tf32 and in bf16 against fp32
#   6. kernel launches per training step (numba.cuda counted; everything under nsys if present)
#   7. benchmarks/gpu.py: tokens/s and peak memory, ours against torch in the same run; on small
#      and GPT-2 also the flash attention (SCRATCHGPT_ATTENTION=flash) in fp32, tf32 and bf16
#   8. benchmarks/gpu_kernels.py: the LayerNorm and softmax kernels' time per block size
# Each section has its own time limit, and a failing section does not stop the others; the
# summary at the end lists every section's result. Logs and JSON go to $OUT (./gpu_check_out).
#
#   bash benchmarks/gpu_check.sh                        # from the repository root, on the GPU machine
#   GPU_CHECK_STANDIN=1 bash benchmarks/gpu_check.sh    # a dry run on the CPU through the CuPy stand-in
#                                                       # (tests/fakecupy), small sizes; the tests run it
#
# Awaiting its first GPU run: the flash attention (kernels/cuda_flash.py, SCRATCHGPT_ATTENTION=flash):
# its correctness in section 3 (tests/test_kernels_cuda_flash.py; in tests/test_gpu.py the whole
# model's gradients, hd = 64 at T = 300, the CUDA-graph replay), its speed and peak memory in section 7.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
STANDIN="${GPU_CHECK_STANDIN:-0}"
export SCRATCHGPT_CACHE="$OUT/corpus_cache" MPLBACKEND=Agg PYTHONUNBUFFERED=1
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$OUT/numba_cache}"
if [ "$STANDIN" = 1 ]; then
    export PYTHONPATH="$ROOT/tests/fakecupy${PYTHONPATH:+:$PYTHONPATH}"
    ITERS=12; PREC_STEPS=3; T_TESTS=300; T_CLI=300
    BENCH=(--configs tiny --steps 1 --repeats 1 --warmup 1 --ours-only --flash tiny)
    TESTS=(tests/test_gpu.py tests/test_precision.py)
else
    ITERS=300; PREC_STEPS=100; T_TESTS=240; T_CLI=150
    BENCH=(--configs tiny,small,gpt2 --steps 5 --repeats 3 --warmup 2 --flash small,gpt2)
    TESTS=(tests/test_gpu.py tests/test_kernels_cuda.py tests/test_kernels_cuda_flash.py
           tests/test_kernels_cuda_available.py tests/test_precision.py)
fi
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

section() { echo; echo "=== $1  ($(date -u +%H:%M:%S) UTC, ${SECONDS}s in) ==="; }
result() { echo "$1: $2" | tee -a "$SUMMARY"; }       # section name, PASS/FAIL/... and a word

# ---------------------------------------------------------------- 1. versions
section "1. versions"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not found"
nvidia-smi 2>/dev/null | grep -o "CUDA Version: [0-9.]*" || true
"$PY" - <<'EOF'
import importlib.metadata as md, sys
print("python", sys.version.split()[0])
for dist in ("numpy", "cupy-cuda13x", "cupy-cuda12x", "numba", "numba-cuda", "cuda-bindings", "cuda-python",
             "torch", "pytest", "scratchgpt"):
    try:
        print(f"{dist} {md.version(dist)}")
    except md.PackageNotFoundError:
        pass
try:
    import cupy
    rt = cupy.cuda.runtime
    print("cupy", cupy.__version__, "| CUDA runtime", rt.runtimeGetVersion(), "| driver", rt.driverGetVersion())
except Exception as e:
    print("cupy: not usable:", type(e).__name__, e)
try:
    import torch
    print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuda available", torch.cuda.is_available())
except Exception as e:
    print("torch: not usable:", type(e).__name__, e)
import numpy
print("numpy.row_stack present:", hasattr(numpy, "row_stack"))
EOF

# ---------------------------------------------------------------- 2. install and available()
section "2. install, kernels.cuda.available()"
if [ "$STANDIN" != 1 ]; then
    if ! "$PY" -c "import scratchgpt.kernels, sys; sys.exit(not scratchgpt.kernels.__file__.startswith('$ROOT'))" 2>/dev/null; then
        # offline on the GPU machine: no build isolation, no dependencies fetched
        "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
            || { echo "pip install -e . failed: mapping kernels/ and data/ by symlinks instead";
                 ln -sfn ../kernels scratchgpt/kernels; ln -sfn ../data scratchgpt/corpora;
                 export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"; }
    fi
    for mod in cupy numba torch pytest; do
        "$PY" -c "import $mod" 2>/dev/null || echo "MISSING: python module $mod (install it; this machine may be offline)"
    done
fi
if "$PY" - <<'EOF'
import sys, time
t = time.perf_counter()
from scratchgpt.kernels import cuda
ok = cuda.available()
print(f"kernels.cuda.available(): {ok} ({cuda.why_unavailable or 'a trivial kernel compiled and ran'}; "
      f"{time.perf_counter() - t:.1f} s)")
sys.exit(0 if ok else 1)
EOF
then result "2 numba.cuda kernels usable" PASS
elif [ "$STANDIN" = 1 ]; then result "2 numba.cuda kernels usable" "no (expected on the stand-in: array code)"
else result "2 numba.cuda kernels usable" "FAIL (array code instead)"; fi

# ---------------------------------------------------------------- 3. tests
section "3. GPU tests"
timeout "$T_TESTS" "$PY" -m pytest -q -p no:cacheprovider -rs "${TESTS[@]}" 2>&1 | tee "$OUT/tests.log" | tail -40
rc=${PIPESTATUS[0]}
counts=$(grep -Eo "[0-9]+ (passed|failed|skipped|errors?)" "$OUT/tests.log" | tail -4 | paste -sd, -)
[ "$rc" = 0 ] && result "3 GPU tests" "PASS ($counts)" || result "3 GPU tests" "FAIL rc=$rc ($counts)"

# ---------------------------------------------------------------- 4. the command line on CuPy
section "4. the command line on CuPy"
TEXT="$OUT/text.txt"
cat README.md docs/*.md examples/README.md > "$TEXT"
TRAIN=(-m scratchgpt train --text-file "$TEXT" --backend cupy --max-iters "$ITERS" --eval-interval $((ITERS / 3))
       --eval-iters 5 --sample-tokens 50 --drop-rate 0.1 --seed 1 --no-progress)
rm -rf "$OUT/runA" "$OUT/runB"
cli() { timeout "$T_CLI" "$PY" "$@"; }
t0=$SECONDS
cli "${TRAIN[@]}" --no-cuda-graph --out-dir "$OUT/runA" > "$OUT/runA.log" 2>&1
rc=$?; tail -3 "$OUT/runA.log"
[ "$rc" = 0 ] && result "4a train on CuPy ($ITERS iterations, $((SECONDS - t0)) s)" PASS \
              || result "4a train on CuPy" "FAIL rc=$rc (see $OUT/runA.log)"
tail -1 "$OUT/runA/metrics.jsonl" 2>/dev/null

# run G: the same with --cuda-graph: the same losses as run A
rm -rf "$OUT/runG"
t0=$SECONDS
cli "${TRAIN[@]}" --cuda-graph --out-dir "$OUT/runG" > "$OUT/runG.log" 2>&1
rc=$?; tail -2 "$OUT/runG.log"
if [ "$rc" = 0 ] && "$PY" - "$OUT/runA" "$OUT/runG" <<'EOF'
import json, sys
rows = [[json.loads(l) for l in open(f"{d}/metrics.jsonl")] for d in sys.argv[1:]]
worst = max(abs(a[k] - b[k]) / abs(a[k]) for a, b in zip(*rows) for k in ("train_loss", "val_loss"))
print(f"--cuda-graph against eager, same seed: largest relative difference of the logged losses {worst:.2e}")
sys.exit(0 if worst <= 1e-5 and len(rows[0]) == len(rows[1]) else 1)
EOF
then result "4a train --cuda-graph on CuPy ($((SECONDS - t0)) s): the eager run's losses" PASS
else result "4a train --cuda-graph on CuPy" "FAIL rc=$rc (see $OUT/runG.log)"; fi

# run B: --cuda-graph, Ctrl-C (SIGINT) once its first checkpoint is written and it has trained a
# little, then --resume: bit for bit run G
"$PY" "${TRAIN[@]}" --cuda-graph --out-dir "$OUT/runB" > "$OUT/runB.log" 2>&1 &
pid=$!
for _ in $(seq 600); do
    [ -f "$OUT/runB/ckpt_latest.npz" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
sleep 1
kill -INT "$pid" 2>/dev/null
wait "$pid"; rc=$?
grep -E "interrupted at|done:" "$OUT/runB.log"
cli "${TRAIN[@]}" --cuda-graph --out-dir "$OUT/runB" --resume > "$OUT/runB_resume.log" 2>&1
rc2=$?; tail -2 "$OUT/runB_resume.log"
if "$PY" - "$OUT/runG" "$OUT/runB" <<'EOF'
import json, sys
import numpy as np
a, b = sys.argv[1], sys.argv[2]
za, zb = (np.load(f"{d}/ckpt_latest.npz", allow_pickle=False) for d in (a, b))
diff = max(float(np.max(np.abs(za[k].astype(np.float64) - zb[k].astype(np.float64)), initial=0.0))
           for k in za.files if k != "meta.json")
same = all(np.array_equal(za[k], zb[k]) for k in za.files if k != "meta.json")
rows = [[json.loads(l) for l in open(f"{d}/metrics.jsonl")] for d in (a, b)]
losses = [[(r["iter"], r["train_loss"], r["val_loss"]) for r in rs] for rs in rows]
print(f"interrupted + resumed run vs uninterrupted: weights and AdamW state bit-exact: {same} "
      f"(largest difference {diff:.3g}); metrics identical: {losses[0] == losses[1]}")
sys.exit(0 if same and losses[0] == losses[1] else 1)
EOF
then result "4b --cuda-graph, Ctrl-C + --resume on CuPy bit-exact" "PASS (SIGINT rc=$rc, resume rc=$rc2)"
else result "4b --cuda-graph, Ctrl-C + --resume on CuPy bit-exact" "FAIL (SIGINT rc=$rc, resume rc=$rc2; see above)"; fi

for prec in fp32 tf32 bf16; do
    SCRATCHGPT_BACKEND=cupy cli -m scratchgpt sample --out-dir "$OUT/runA" --prompt "The " --max-new-tokens 80 \
        --precision "$prec" > "$OUT/sample_$prec.txt" 2>&1
    rc=$?; head -c 300 "$OUT/sample_$prec.txt"; echo
    [ "$rc" = 0 ] && result "4c sample on CuPy --precision $prec" PASS || result "4c sample on CuPy --precision $prec" "FAIL rc=$rc"
    SCRATCHGPT_BACKEND=cupy cli -m scratchgpt eval --out-dir "$OUT/runA" --text-file "$TEXT" --max-batches 20 \
        --precision "$prec" > "$OUT/eval_$prec.txt" 2>&1
    rc=$?; tail -1 "$OUT/eval_$prec.txt"
    [ "$rc" = 0 ] && result "4d eval on CuPy --precision $prec ($(tail -1 "$OUT/eval_$prec.txt" | cut -c1-60))" PASS \
                  || result "4d eval on CuPy --precision $prec" "FAIL rc=$rc"
done
SCRATCHGPT_BACKEND=numpy cli -m scratchgpt sample --out-dir "$OUT/runA" --prompt "The " --max-new-tokens 40 \
    > "$OUT/sample_cpu.txt" 2>&1
rc=$?; [ "$rc" = 0 ] && result "4e the GPU run sampled on the CPU" PASS || result "4e the GPU run sampled on the CPU" "FAIL rc=$rc"

# fine-tuning and chat on CuPy, from a small BPE base trained on CuPy (instruction tuning needs
# <|endoftext|>), on tiny data made here
"$PY" - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
rows = [(f"cheap pills offer {i}", "spam") for i in range(20)] + [(f"see you at {i} tonight", "ham") for i in range(20)]
open(f"{out}/sms.csv", "w").write("label,text\n" + "".join(f"{l},{t}\n" for t, l in rows))
entries = [{"instruction": f"Add {i} and {i + 1}.", "input": "", "output": f"{2 * i + 1}"} for i in range(24)]
json.dump(entries, open(f"{out}/instructions.json", "w"))
open(f"{out}/base.txt", "w").write((" ".join(t for t, _ in rows) + " " + json.dumps(entries) + " ") * 4)
EOF
rm -rf "$OUT/base" "$OUT/cls" "$OUT/sft"
cli -m scratchgpt train --text-file "$OUT/base.txt" --tokenizer bpe:300 --backend cupy --n-layers 2 --n-heads 2 \
    --emb-dim 32 --context-length 128 --batch-size 4 --max-iters 20 --eval-interval 20 --eval-iters 2 \
    --sample-tokens 8 --out-dir "$OUT/base" --no-progress > "$OUT/base.log" 2>&1 \
    || result "4f a BPE base run on CuPy" "FAIL (see $OUT/base.log)"
SCRATCHGPT_BACKEND=cupy cli -m scratchgpt finetune-cls --out-dir "$OUT/base" --csv "$OUT/sms.csv" --epochs 1 \
    --save-dir "$OUT/cls" --lora-rank 2 > "$OUT/finetune_cls.log" 2>&1
rc=$?; tail -2 "$OUT/finetune_cls.log"
[ "$rc" = 0 ] && result "4f finetune-cls on CuPy" PASS || result "4f finetune-cls on CuPy" "FAIL rc=$rc"
SCRATCHGPT_BACKEND=cupy cli -m scratchgpt finetune-sft --out-dir "$OUT/base" --json "$OUT/instructions.json" \
    --epochs 1 --save-dir "$OUT/sft" --show 1 --max-new-tokens 8 > "$OUT/finetune_sft.log" 2>&1
rc=$?; tail -2 "$OUT/finetune_sft.log"
[ "$rc" = 0 ] && result "4g finetune-sft on CuPy" PASS || result "4g finetune-sft on CuPy" "FAIL rc=$rc"
printf 'Add 2 and 3.\n' | SCRATCHGPT_BACKEND=cupy cli -m scratchgpt chat --out-dir "$OUT/sft" --max-new-tokens 8 \
    > "$OUT/chat.log" 2>&1
rc=$?; tail -2 "$OUT/chat.log"
[ "$rc" = 0 ] && result "4h chat on CuPy" PASS || result "4h chat on CuPy" "FAIL rc=$rc"

# ---------------------------------------------------------------- 5. precision
section "5. precision: loss curves against fp32"
timeout 120 "$PY" benchmarks/gpu_precision.py --steps "$PREC_STEPS" 2>&1 | grep -v RuntimeWarning | tee "$OUT/precision.txt"
rc=${PIPESTATUS[0]}
for prec in tf32 bf16; do
    line=$(grep "^$prec:" "$OUT/precision.txt" | cut -c1-100)
    if [ "$rc" = 0 ] && echo "$line" | grep -q within; then result "5 $prec follows fp32" "PASS ($line)"
    else result "5 $prec follows fp32" "FAIL rc=$rc ($line)"; fi
done

# ---------------------------------------------------------------- 6. kernel launches per step
section "6. kernel launches per step"
for cfg in tiny gpt2; do
    [ "$STANDIN" = 1 ] && [ "$cfg" = gpt2 ] && continue
    if [ "$STANDIN" != 1 ] && command -v nsys > /dev/null; then
        timeout 120 nsys profile -q -f true -o "$OUT/launches_$cfg" --capture-range=cudaProfilerApi \
            --capture-range-end=stop "$PY" benchmarks/gpu_launches.py --config "$cfg" --steps 3
        nsys stats -q -f csv -r cuda_gpu_kern_sum "$OUT/launches_$cfg.nsys-rep" -o "$OUT/launches_$cfg" > /dev/null 2>&1
        "$PY" - "$OUT/launches_${cfg}_cuda_gpu_kern_sum.csv" "$cfg" <<'EOF'
import csv, sys
try:
    rows = list(csv.DictReader(open(sys.argv[1])))
    n = sum(int(r["Instances"]) for r in rows)
    print(f"{sys.argv[2]}: {n / 3:.0f} kernel launches per step in all (nsys), {len(rows)} distinct kernels")
except (OSError, KeyError, ValueError) as e:
    print("nsys report unreadable:", e)
EOF
    else
        timeout 120 "$PY" benchmarks/gpu_launches.py --config "$cfg" --steps 3 2>&1 | grep -v RuntimeWarning | tail -1
    fi
done | tee "$OUT/launches.txt"
result "6 launches per step" "see $OUT/launches.txt"

# ---------------------------------------------------------------- 7. speed and memory against torch
section "7. benchmarks/gpu.py: ours against torch"
if [ "$STANDIN" != 1 ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    echo "torch has no CUDA here: ours only"
    BENCH+=(--ours-only)
fi
timeout 390 "$PY" benchmarks/gpu.py "${BENCH[@]}" --json "$OUT/gpu.json" 2>&1 | grep -v RuntimeWarning | tee "$OUT/gpu.txt"
rc=${PIPESTATUS[0]}
[ "$rc" = 0 ] && result "7 benchmark" "PASS (table above, $OUT/gpu.json)" || result "7 benchmark" "FAIL rc=$rc"

# ---------------------------------------------------------------- 8. the row kernels' block size
section "8. benchmarks/gpu_kernels.py: LayerNorm and softmax per block size"
if [ "$STANDIN" != 1 ]; then
    timeout 60 "$PY" benchmarks/gpu_kernels.py 2>&1 | grep -v Warning | tee "$OUT/kernels.txt"
    result "8 row kernels" "see $OUT/kernels.txt"
fi

section "summary (${SECONDS}s in all)"
cat "$SUMMARY"
! grep -q FAIL "$SUMMARY"
