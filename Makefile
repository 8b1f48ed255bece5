# patchtune — `make run` (set up, then the main job) and `make test` (set up, then the suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN_DIR ?= runs/demo
FMNIST_DEB := /usr/share/datasets/fashion-mnist

.PHONY: setup data run test bench lint clean

setup: $(STAMP) data

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# Real Fashion-MNIST from Debian where apt-get is available as root; elsewhere the loader downloads it.
data:
	@if [ ! -d $(FMNIST_DEB) ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing dataset-fashion-mnist"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null; } || \
	  echo "apt-get could not install dataset-fashion-mnist; patchtune will try torchvision's download"; \
	fi

# Main job (until the study runner lands): the paper's pipeline on real F-MNIST, on a documented subset so it
# finishes in a few minutes on 2 CPU cores: pretrain cnn3 on 30k images, fine-tune with Adam and RMSProp,
# evaluate all three on 2000 test images at the paper's attack parameters.
run: setup
	$(BIN)/patchtune pretrain --dataset fmnist --arch cnn3 --epochs 6 --limit-train 30000 --out $(RUN_DIR)/base.pt --quiet
	$(BIN)/patchtune finetune --base $(RUN_DIR)/base.pt --optimizer adam --lr 1e-3 --epochs 1 --limit-train 30000 --out $(RUN_DIR)/adam.pt --quiet
	$(BIN)/patchtune finetune --base $(RUN_DIR)/base.pt --optimizer rmsprop --lr 1e-3 --epochs 1 --limit-train 30000 --out $(RUN_DIR)/rmsprop.pt --quiet
	$(BIN)/patchtune eval $(RUN_DIR)/base.pt $(RUN_DIR)/adam.pt $(RUN_DIR)/rmsprop.pt --limit 2000 --quiet

test: setup
	$(BIN)/ruff check study trainables analysis tests benchmarks
	$(BIN)/mypy trainables study
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: setup
	$(BIN)/python benchmarks/bench_core.py

lint: setup
	$(BIN)/ruff check study trainables analysis tests benchmarks
	$(BIN)/mypy trainables study

clean:
	rm -rf $(VENV) runs .pytest_cache
