# patchtune — `make run` (set up, then the main job) and `make test` (set up, then the suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN_DIR ?= runs/demo
FMNIST_DEB := /usr/share/datasets/fashion-mnist
# Every extra in one resolve, checked: `pip check` fails the set-up if any installed package's requirement is unmet.
EXTRAS := dev,watch,timm,mlflow,docs

.PHONY: setup data browser run test bench lint docs clean control

setup: $(STAMP) data

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	$(BIN)/python -m pip check
	@touch $(STAMP)

# Real Fashion-MNIST from Debian where apt-get is available as root; elsewhere the loader downloads it.
data:
	@if [ ! -d $(FMNIST_DEB) ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing dataset-fashion-mnist"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null; } || \
	  echo "apt-get could not install dataset-fashion-mnist; patchtune will try torchvision's download"; \
	fi

# Debian's Chromium for the suite's real-browser checks (report.html, optuna-dashboard), where apt-get runs as root;
# elsewhere those tests skip and say why.
browser:
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium (headless browser for the page checks)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } || \
	  echo "apt-get could not install chromium; the browser tests will skip"; \
	fi

# Main job: the `quick` study on real Fashion-MNIST (8 trials, 3-8 min on 2 CPU cores after set-up): a base cnn3 pretrained
# once (cached), then Optuna + Ray Tune search the fine-tuning method, optimizer, lr, batch size and the patch parameters,
# maximising robust accuracy on the validation split; the best trial is evaluated on the test split.
STUDY_NAME ?= quick-$(shell date +%Y%m%d-%H%M%S)
run: setup
	$(BIN)/patchtune run quick --name $(STUDY_NAME)

# Two pytest workers, a test file at a time (tests/conftest.py: the longest files first).
PYTEST_WORKERS ?= 2
test: lint docs browser
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

# The audit's positive control: a robust cnn3 trained as the reference recipe does (MTandHJ/PyTorch-Robust), from
# scratch: PGD-AT at the paper's eps 0.3 (PGD-10, alpha x steps = 2.5 eps), eps grown over the first CONTROL_WARMUP
# of the steps, on all training images; audited with the reference strong attacks against a pretrained base.
# The defaults take about 40 min on 2 CPU cores (docs/record/2026-11-27-positive-control.md). CONTROL_INIT=base fine-tunes the
# base instead; CONTROL_METHOD pgd_at or trades (checked before anything runs); CONTROL_ARGS goes to
# `patchtune finetune` as is.
CONTROL_DIR ?= runs/control
CONTROL_EPOCHS ?= 10
CONTROL_TRAIN ?= 54000
CONTROL_WARMUP ?= 0.3
CONTROL_STEPS ?= 10
CONTROL_METHOD ?= pgd_at
CONTROL_INIT ?= scratch
CONTROL_ARGS ?=
control: setup
	$(if $(filter-out scratch base,$(CONTROL_INIT)),$(error CONTROL_INIT must be scratch or base, got '$(CONTROL_INIT)'))
	@$(BIN)/python -c "import sys; from trainables.vocab import ROBUST_METHODS, METHODS; ok = [m.value for m in ROBUST_METHODS if 'at_steps' in METHODS[m].params]; \
		sys.argv[1] in ok or sys.exit(f'CONTROL_METHOD must be one of {\", \".join(ok)} (a method with attack steps), got {sys.argv[1]!r}')" '$(CONTROL_METHOD)'
	@mkdir -p $(CONTROL_DIR)
	test -f $(CONTROL_DIR)/base.pt || $(BIN)/patchtune pretrain --epochs 4 --limit-train 20000 --out $(CONTROL_DIR)/base.pt --quiet
	$(BIN)/patchtune finetune --base $(CONTROL_DIR)/base.pt --method $(CONTROL_METHOD) --train-eps 0.3 --at-steps $(CONTROL_STEPS) \
		--eps-warmup $(CONTROL_WARMUP) --epochs $(CONTROL_EPOCHS) --limit-train $(CONTROL_TRAIN) \
		$(if $(filter scratch,$(CONTROL_INIT)),--from-scratch) $(CONTROL_ARGS) --out $(CONTROL_DIR)/$(CONTROL_METHOD).pt --quiet
	$(BIN)/patchtune audit $(CONTROL_DIR)/$(CONTROL_METHOD).pt --base $(CONTROL_DIR)/base.pt --eps 0.3 --limit 500 \
		--out $(CONTROL_DIR)/audit.json

bench: setup
	$(BIN)/python -m benchmarks.bench_core

# ruff, strict mypy on trainables/, study/ and benchmarks/, and the layer contracts in pyproject.toml (import-linter)
lint: setup
	$(BIN)/ruff check study trainables analysis tests benchmarks docs
	$(BIN)/mypy trainables study benchmarks
	$(BIN)/lint-imports

# The documentation site, strictly: a broken link, a missing page or a stale reference fails.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) runs site .pytest_cache
