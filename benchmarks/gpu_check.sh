#!/usr/bin/env bash
# One lent-GPU session (no internet, no Ray there), in stages; each keeps what it measured under $OUT even when
# a later one runs out of time. STAGES picks them (default: all, in this order):
#   tests     the GPU-only and device-agnostic tests named in $TESTS, with TORCH_DEVICE=cuda
#   pretrain  an undefended cnn3 base on all 54k F-MNIST training images ($OUT/base.pt)
#   bench     `make bench`'s GPU sections $GPU_SECTIONS on that base (Tune rows skipped: no Ray)
#   control   the audit's positive control: `make control`'s commands at $CONTROL_EPOCHS x $CONTROL_TRAIN
#             (from scratch unless CONTROL_ARGS is set, e.g. to ""; $CONTROL_METHOD, $CONTROL_STEPS, $CONTROL_WARMUP)
# Expects F-MNIST under $PATCHTUNE_CACHE/data/fashion-mnist; prepare it where the data is (it is not committed):
#   mkdir -p .devcache/data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz .devcache/data/fashion-mnist/
#   printf '/.devcache/\n' >> .git/info/exclude       # then carry [".devcache"]
# BENCH_ARGS and PRETRAIN_ARGS go to those commands as they are (the suite's smoke run shrinks them so).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
STAGES=${STAGES:-tests pretrain bench control}
GPU_SECTIONS=${GPU_SECTIONS:-graphs,vgg,switches,compile}
# Bad settings are refused before anything runs: a lease is too short to find them out a stage later.
die() { echo "gpu_check.sh: $*" >&2; exit 2; }
for stage in $STAGES; do
  case $stage in tests|pretrain|bench|control) ;; *) die "unknown stage '$stage' in STAGES (tests pretrain bench control)" ;; esac
done
for section in ${GPU_SECTIONS//,/ }; do
  case $section in fraction|graphs|vgg|switches|compile|packing) ;;
    *) die "unknown section '$section' in GPU_SECTIONS (fraction graphs vgg switches compile packing)" ;; esac
done
for var in TEST_TIMEOUT PRETRAIN_TIMEOUT BENCH_TIMEOUT FINETUNE_TIMEOUT AUDIT_TIMEOUT CONTROL_EPOCHS CONTROL_TRAIN CONTROL_STEPS AUDIT_LIMIT; do
  value=${!var:-1}
  [[ $value =~ ^[1-9][0-9]*$ ]] || die "$var must be a positive integer, got '$value'"
done
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PATCHTUNE_CACHE=${PATCHTUNE_CACHE:-$PWD/.devcache} PYTHONUNBUFFERED=1
LOG=$OUT/log.txt  # everything, in order (at most 8 files come back from a lease: keep them few)
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>&1 | tee -a "$LOG"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$LOG"
if ! command -v patchtune >/dev/null; then  # not pip-installed there: an executable shim (timeout runs no functions)
  mkdir -p /tmp/patchtune-bin
  printf '#!/bin/sh\nexec python3 -c "import sys; from study.cli import main; sys.argv[0] = \x27patchtune\x27; sys.exit(main())" "$@"\n' \
    > /tmp/patchtune-bin/patchtune
  chmod +x /tmp/patchtune-bin/patchtune
  export PATH=/tmp/patchtune-bin:$PATH
fi
stamp() { echo "== $(date +%T) $*" | tee -a "$LOG"; }
C=$OUT/control

for stage in $STAGES; do
  stamp "start $stage"
  case $stage in
    tests)  # optuna/ray are not needed by these tests; their warning filter would not import without optuna
      TORCH_DEVICE=cuda timeout "${TEST_TIMEOUT:-60}" python3 -m pytest -q -p no:cacheprovider \
        -o "filterwarnings=ignore::DeprecationWarning" ${TESTS:-tests/test_attacks.py} 2>&1 | tail -15 | tee -a "$LOG" ;;
    pretrain)
      timeout "${PRETRAIN_TIMEOUT:-60}" patchtune pretrain --out "$OUT/base.pt" --batch-size 256 ${PRETRAIN_ARGS:-} --quiet 2>&1 | tee -a "$LOG" ;;
    bench)
      base=(); [ -f "${BENCH_BASE:-$OUT/base.pt}" ] && base=(--base "${BENCH_BASE:-$OUT/base.pt}")
      (timeout "${BENCH_TIMEOUT:-170}" python3 -m benchmarks.bench_core --no-tune --no-before-after --no-record \
        --repeats 3 "${base[@]}" --gpu-only "$GPU_SECTIONS" ${BENCH_ARGS:-}) 2>&1 | grep -v "^\s*$" | tee "$OUT/bench.txt" \
        | grep -E "^(ROW|bf16)" | tee -a "$LOG"
      echo "bench exit ${PIPESTATUS[0]} (124: timed out)" | tee -a "$LOG" ;;
    control)
      mkdir -p "$C"
      SECONDS=0
      timeout "${FINETUNE_TIMEOUT:-160}" patchtune finetune --base "$OUT/base.pt" \
        --method "${CONTROL_METHOD:-pgd_at}" --train-eps 0.3 --at-steps "${CONTROL_STEPS:-10}" --eps-warmup "${CONTROL_WARMUP:-0.3}" \
        --epochs "${CONTROL_EPOCHS:-20}" --batch-size 256 \
        ${CONTROL_ARGS---from-scratch} --limit-train "${CONTROL_TRAIN:-54000}" --out "$C/control.pt" --quiet 2>&1 | tee -a "$LOG"
      echo "finetune wall $SECONDS s" | tee -a "$LOG"; SECONDS=0
      # The audit runs in fp32 (no bf16, no TF32): three audits of 1000 images sharing an H200 with every switch off
      # (PATCHTUNE_PERF=off, 2026-11-27) did not finish in 190 s, so 500 images, as `make control`, and 300 s.
      timeout "${AUDIT_TIMEOUT:-300}" patchtune audit "$C/control.pt" --base "$OUT/base.pt" \
        --eps 0.3 --limit "${AUDIT_LIMIT:-500}" ${AUDIT_ARGS:-} --out "$OUT/audit.json" --quiet 2>&1 | tee -a "$LOG" | tail -30
      echo "audit wall $SECONDS s" | tee -a "$LOG" ;;
  esac
  stamp "end $stage"
done
