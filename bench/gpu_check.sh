#!/usr/bin/env bash
# The training-throughput check for one GPU, in about 7 minutes: writes one JSON and prints a table.
#
#   bash bench/gpu_check.sh [--output DIR] [--dry-run] [--smoke]
#
#   1. data     synthetic UniMed shards (JPEGs, 512 px short side) and the loader alone: workers decoding, and the
#               JPEGs decoded on the GPU (bench/bench_data.py --loader-workers)
#   2. b16      B/16 training step at micro-batch 128 in bf16 against open_clip (captions padded to 256, torch AdamW):
#               eager, SDPA, flash attention (if flash_attn is installed), the pooled last layer, and apart
#               torch.compile; pairs/s, peak memory, MFU (bench/bench_train.py)
#   3. l14      L/14-336 with activation checkpointing, same comparison
#   4. train    train.py, B/16 from scratch on the shards: 200 steps with worker decoding, 100 with GPU decoding
#               (samples/s, MFU, data wait, peak memory from its TensorBoard logs)
#   5. sync     train.py profiled: the calls that make the host wait, per step (bench/profile_sync.py)
#   6. report   DIR/gpu_check.json and the table (bench/gpu_report.py)
#
# Every part has a time limit (15 minutes together); one that fails or times out is reported and the others still
# run. PYTHON picks the interpreter (default .venv/bin/python if present, else python3). --dry-run prints the
# commands and runs nothing (it writes the training configuration into DIR); --smoke runs every part but compilation
# at toy sizes on the CPU (minutes) to check the script itself.
set -u -o pipefail

usage() {
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUTPUT="$ROOT/bench/results/gpu_check"
DRY_RUN=0
SMOKE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --output)
            [ $# -ge 2 ] || { echo "gpu_check.sh: --output needs a directory" >&2; exit 2; }
            OUTPUT=$2
            shift 2
            ;;
        --dry-run) DRY_RUN=1; shift ;;
        --smoke) SMOKE=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

CPUS=$(nproc)
if [ "$SMOKE" = 1 ]; then
    DEVICE=cpu B16_BATCH=2 L14_BATCH=1 ROUNDS=1 STEPS=1 SAMPLES=64 SHARD=8 WORKERS=2 B16_OURS="sdpa sdpa+pooled"
    TRAIN_STEPS=3 DEVICE_DECODE_STEPS=2 LOG_EVERY=1 PROFILE_STEPS=5 PROFILE_LOG_EVERY=2 MIXED=no DTYPE=float32
else
    DEVICE=cuda B16_BATCH=128 L14_BATCH=128 ROUNDS=5 STEPS=3 SAMPLES=4096 SHARD=128 WORKERS=$((CPUS < 16 ? CPUS : 16))
    B16_OURS="eager sdpa sdpa+pooled"
    if [ "$DRY_RUN" = 0 ] && "$PYTHON" -c "import flash_attn" 2>/dev/null; then
        B16_OURS="eager sdpa flash_attention_2 sdpa+pooled"
    fi
    TRAIN_STEPS=200 DEVICE_DECODE_STEPS=100 LOG_EVERY=20 PROFILE_STEPS=12 PROFILE_LOG_EVERY=4 MIXED=bf16 DTYPE=bfloat16
fi
DATA="$OUTPUT/data"

if [ "$DRY_RUN" = 0 ] && [ "$SMOKE" = 0 ]; then
    if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check.sh: no CUDA GPU visible to $PYTHON; use --smoke to check the script on this machine." >&2
        exit 1
    fi
fi
STATUS="$OUTPUT/status.tsv"
mkdir -p "$OUTPUT"
if [ "$DRY_RUN" = 0 ]; then
    rm -rf "$OUTPUT/train" "$OUTPUT/train_device_decode" "$OUTPUT/profile"  # train.py refuses to overwrite a run
    : >"$STATUS"
fi

# run NAME SECONDS COMMAND...: the command under a time limit, its output in DIR/NAME.log, its status in status.tsv.
run() {
    local name=$1 limit=$2
    shift 2
    echo "[$name] $(printf '%q ' "$@")"
    [ "$DRY_RUN" = 1 ] && return 0
    local started=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUTPUT/$name.log" 2>&1
    local status=$?
    printf '%s\t%s\t%s\n' "$name" "$status" $((SECONDS - started)) >>"$STATUS"
    if [ "$status" = 0 ]; then
        echo "[$name] done in $((SECONDS - started)) s"
    else
        tail -n 20 "$OUTPUT/$name.log"
        echo "[$name] failed with status $status (124: over its $limit s); see $OUTPUT/$name.log"
    fi
}

# The training configuration: B/16 from scratch on the synthetic shards.
train_config() {
    cat <<EOF
preset: b16
vision: null
text: null
tokenizer: $DATA/tokenizer
data: $DATA
batch_size: $B16_BATCH
micro_batch_size: $B16_BATCH
warmup_steps: 1
num_workers: $WORKERS
mixed_precision: "$MIXED"
checkpoint_every: 100000
keep_checkpoints: 1
EOF
}
train_config >"$OUTPUT/train_b16.yaml"

run data 90 "$PYTHON" "$ROOT/bench/bench_data.py" --data "$DATA" --samples "$SAMPLES" --shard-size "$SHARD" \
    --batch-size "$B16_BATCH" --loader-workers "$WORKERS" --decode-on-device --device "$DEVICE" \
    --output "$OUTPUT/loader.json"
# shellcheck disable=SC2086 # the configurations are separate arguments
run b16 150 "$PYTHON" "$ROOT/bench/bench_train.py" --variant b16 --batch-size "$B16_BATCH" --dtype "$DTYPE" \
    --device "$DEVICE" --rounds "$ROUNDS" --steps "$STEPS" --ours $B16_OURS --output "$OUTPUT"
# Compilation apart: if it outlasts its limit, the other figures stand. Not in a smoke run (minutes on a CPU).
[ "$SMOKE" = 1 ] || run b16_compile 200 "$PYTHON" "$ROOT/bench/bench_train.py" --variant b16 --batch-size "$B16_BATCH" \
    --dtype "$DTYPE" --device "$DEVICE" --rounds "$ROUNDS" --steps "$STEPS" --ours sdpa+compile --tag compile \
    --output "$OUTPUT"
run l14 150 "$PYTHON" "$ROOT/bench/bench_train.py" --variant l14-336-base --batch-size "$L14_BATCH" \
    --dtype "$DTYPE" --device "$DEVICE" --rounds "$ROUNDS" --steps "$STEPS" --activation-checkpointing \
    --ours sdpa sdpa+pooled --output "$OUTPUT"
run train 120 "$PYTHON" "$ROOT/train.py" --config "$OUTPUT/train_b16.yaml" --output-dir "$OUTPUT/train" \
    --max-steps "$TRAIN_STEPS" --log-every "$LOG_EVERY"
run train_device_decode 90 "$PYTHON" "$ROOT/train.py" --config "$OUTPUT/train_b16.yaml" \
    --output-dir "$OUTPUT/train_device_decode" --max-steps "$DEVICE_DECODE_STEPS" --log-every "$LOG_EVERY" \
    --decode-on-device
run sync 90 "$PYTHON" "$ROOT/bench/profile_sync.py" --output "$OUTPUT/sync.json" -- --config "$OUTPUT/train_b16.yaml" \
    --output-dir "$OUTPUT/profile" --max-steps "$PROFILE_STEPS" --log-every "$PROFILE_LOG_EVERY"
run report 30 "$PYTHON" "$ROOT/bench/gpu_report.py" "$OUTPUT"
[ "$DRY_RUN" = 1 ] || cat "$OUTPUT/report.log"
