#!/usr/bin/env bash
# GPU checks and GPU benchmark rows in one call (for a lent GPU machine without internet):
#   - the suite's device-agnostic tests on CUDA (TORCH_DEVICE=cuda; GPU-only tests no longer skip),
#   - `benchmarks/bench_core.py` with its GPU rows (Tune row skipped: Ray is not installed there).
# Expects F-MNIST under $PATCHTUNE_CACHE/data/fashion-mnist and torchattacks as a wheel in .whl/; prepare both
# where there is internet (neither is committed):
#   mkdir -p .devcache/data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz .devcache/data/fashion-mnist/
#   .venv/bin/pip download --no-deps torchattacks==3.5.1 -d .whl      # and `echo /.devcache/ >> .git/info/exclude`
# Writes gpu.txt, tests.txt and bench.txt under ${OUT:-/tmp/gpu-out}.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
if ! python3 -c "import torchattacks" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PATCHTUNE_CACHE=${PATCHTUNE_CACHE:-$PWD/.devcache} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"
# optuna/ray are not needed by these tests; their warning filter would not import without optuna.
TORCH_DEVICE=cuda timeout "${TEST_TIMEOUT:-200}" python3 -m pytest -q -p no:cacheprovider -o "filterwarnings=ignore::DeprecationWarning" \
  ${TESTS:-tests/test_perf.py tests/test_attacks.py tests/test_audit.py tests/test_engine.py tests/test_augment.py} 2>&1 | tail -25 | tee "$OUT/tests.txt"
timeout "${BENCH_TIMEOUT:-330}" python3 benchmarks/bench_core.py --no-tune --no-record --repeats 3 2>&1 | tee "$OUT/bench.txt" | grep -v "^\s*$" | tail -40
