#!/usr/bin/env bash
# Issue 6's GPU measurements in ONE call of the device tool (a task drawn for a GPU has ~15 min of device time in
# all, machine start and transfers included; one command may run 10 min). Writes one JSON line per measurement to
# $OUT/results.jsonl (an {"step": ..., "error": ...} line where one failed or ran out of time) and the full log to
# $OUT/log.txt; it keeps itself under DEADLINE seconds (default 560), so the call's timeout_s=590 is enough.
#
# The GPU image has python3 with torch (CUDA), lightning, torchmetrics, transformers, tokenizers, safetensors, peft,
# pyarrow, pandas, xxhash, huggingface-hub, but NOT datasets (analysis.py needs it: PromptDataModule) nor wandb
# (neither script needs wandb), and nothing can be downloaded there. So the wheels travel with the call
# (/work/.library/device/README.md): first, on the CPU machine, in the repo root, with the project's venv active:
#
#     bash benchmarks/gpu_check.sh --fetch-wheels   # .whl/: datasets dill multiprocess fsspec (~1 MB), git-ignored
#     (add --with-pyarrow if a previous run's log says the image's pyarrow is older than datasets needs: ~45 MB)
#
# then the device tool:   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=590)
# and read files_at/results.jsonl. No kind needed: H100 or H200 both work; the JSON names the device.
#
# What runs (P1's shapes: batch 32, 100 prompt + 128 text tokens, bf16-mixed, AdamW):
#   1. train_step  random-roberta-base  sdpa     ours vs PEFT   (reference: PEFT 27.5 ms/step on an H200)
#   2. train_step  random-roberta-base  eager    ours vs PEFT   (reference: PEFT 36 ms/step)
#   3. train_step  random-t5-base       sdpa     ours vs PEFT   (reference: PEFT 102 ms/step)
#   4. analysis --preset sst2 (67,349 + 872 + 148 examples), bf16-mixed, batch 256, peak memory at 1x and 10x
#   0. fsdp_check.py  tiny-llama under strategy=fsdp (issue 14; FSDP cannot run on CPU), first, as it is short:
#      frozen backbone bit-identical, prompt trained, prompt-only checkpoint, and the FSDP skill-neuron analysis
#      (positions=last) equal to the one-device analysis of the same prompt (thresholds to float rounding,
#      accuracies and scores exactly). When a check fails, its results.jsonl line has "ok": false, "failures"
#      and "error", and log.txt has one "fsdp_check: FAILED: ..." line per failure. FSDP_ONLY=1 runs it alone:
#      run(command="FSDP_ONLY=1 bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=300)
#      (SMOKE=1 rehearses it on a CPU machine with --accelerator cpu --strategy auto; FSDP_ARGS adds arguments.)
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(datasets dill multiprocess fsspec)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    # CPU machine: download the wheels the GPU image lacks, in the versions of the active (project) environment.
    grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    names=("${WHEELS[@]}")
    [[ "${2:-}" == "--with-pyarrow" ]] && names+=(pyarrow)
    specs=()
    for name in "${names[@]}"; do
        version=$(python -c "import importlib.metadata as m; print(m.version('$name'))") || exit 1
        specs+=("$name==$version")
    done
    rm -rf .whl && mkdir -p .whl
    platforms=()
    for p in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
        platforms+=(--platform "${p}_x86_64")
    done
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .whl "${specs[@]}" || exit 1
    ls -la .whl
    exit 0
fi

OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
LOG=$OUT/log.txt
: > "$RESULTS"
DEADLINE=${DEADLINE:-560}
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export SKILL_NEURONS_HOME=/tmp/snhome HF_DATASETS_CACHE=/tmp/hfds WANDB_MODE=disabled

if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >> "$LOG" 2>&1 && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
    echo "no .whl/ carried: analysis.py will fail without datasets (see the header)" | tee -a "$LOG"
fi

{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv; nvidia-smi; } >> "$LOG" 2>&1
python3 - >> "$RESULTS" 2>> "$LOG" <<'EOF'
import importlib, json
versions = {}
for name in ("torch", "transformers", "peft", "lightning", "torchmetrics", "datasets", "pyarrow", "fsspec"):
    try:
        versions[name] = importlib.import_module(name).__version__
    except Exception as err:  # noqa: BLE001 - recorded, not fatal
        versions[name] = f"unavailable: {type(err).__name__}: {err}"
import torch
print(json.dumps({"step": "environment", "versions": versions, "cuda": torch.cuda.is_available(),
                  "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}))
EOF

# run STEP LIMIT CMD...: CMD's last stdout line (its JSON) goes to results.jsonl, everything else to the log.
run() {
    local step=$1 limit=$2; shift 2
    local left=$((DEADLINE - SECONDS))
    (( limit > left )) && limit=$left
    if (( limit < 20 )); then
        echo "{\"step\": \"$step\", \"error\": \"skipped: no time left\"}" >> "$RESULTS"; return
    fi
    echo "=== $step (limit ${limit}s, at ${SECONDS}s): $*" >> "$LOG"
    local out rc
    out=$(timeout "$limit" "$@" 2>> "$LOG"); rc=$?
    echo "$out" >> "$LOG"
    local last
    last=$(printf '%s\n' "$out" | tail -n 1)
    if [[ "$last" == "{"* ]]; then  # a failed check (exit 1) still records what it measured, with the error
        python3 -c 'import json,sys; d=json.loads(sys.argv[2]); rc=int(sys.argv[3]); print(json.dumps(
            {"step": sys.argv[1], **d, **({"error": f"exit {rc}: " + "; ".join(d.get("failures") or ["see log.txt"])}
                                        if rc else {})}))' "$step" "$last" "$rc" >> "$RESULTS" \
            || echo "{\"step\": \"$step\", \"error\": \"exit $rc, unreadable JSON (see log.txt)\"}" >> "$RESULTS"
    else
        local why="exit $rc"; (( rc == 124 )) && why="timeout after ${limit}s"
        echo "{\"step\": \"$step\", \"error\": \"$why (see log.txt)\"}" >> "$RESULTS"
    fi
    echo "=== $step done at ${SECONDS}s (rc $rc)" >> "$LOG"
}

ROBERTA=random-roberta-base T5=random-t5-base
P1=(--batch-size 32 --prompt-length 100 --text-length 128 --precision bf16-mixed --device cuda
    --warmup 5 --steps 10 --blocks 5)
SST2=(--batch-size 256 --precision bf16-mixed --device cuda --repeats 1)
if [[ "${SMOKE:-0}" == 1 ]]; then  # rehearse this script on a CPU machine: tiny shapes, same steps
    ROBERTA=tiny-roberta T5=tiny-t5
    P1=(--batch-size 4 --prompt-length 4 --text-length 12 --precision 32 --device cpu --warmup 1 --steps 2 --blocks 2)
    SST2=(--backbone tiny-roberta --prompt-length 4 --text-length 16 --train 64 --eval 16 --adv 16 --batch-size 16
          --device cpu --repeats 1)
fi
FSDP=(--backbone tiny-llama --devices 1)
[[ "${SMOKE:-0}" == 1 ]] && FSDP+=(--accelerator cpu --strategy auto)
read -r -a FSDP_EXTRA <<< "${FSDP_ARGS:-}"
run fsdp_causal_lm "${FSDP_LIMIT:-150}" python3 benchmarks/fsdp_check.py "${FSDP[@]}" "${FSDP_EXTRA[@]}"
if [[ "${FSDP_ONLY:-0}" == 1 ]]; then
    cat "$RESULTS"
    if grep -q '"step": "fsdp_causal_lm".*"error"' "$RESULTS"; then
        echo "gpu_check: FAILED: fsdp_causal_lm (see results.jsonl and the fsdp_check lines in log.txt)"; exit 1
    fi
    exit 0
fi
run train_step_roberta_sdpa 120 python3 benchmarks/train_step.py --backbone $ROBERTA --attn sdpa "${P1[@]}"
run train_step_roberta_eager 90 python3 benchmarks/train_step.py --backbone $ROBERTA --attn eager "${P1[@]}"
run train_step_t5_sdpa 150 python3 benchmarks/train_step.py --backbone $T5 --attn sdpa "${P1[@]}"
# Whatever time is left (>= 4 min expected): timing at 1x (one repeat after a warm-up), then the peak-memory
# children at 1x and 10x the data (the 10x child builds 683,690 synthetic examples in Python first).
run analysis_sst2 600 python3 benchmarks/analysis.py --preset sst2 "${SST2[@]}" --memory-scales 1,10

echo "total ${SECONDS}s" >> "$LOG"
cat "$RESULTS"
