# The two commands: `make repro` and `make test`. Both set up .venv on a fresh machine first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export YOLO_OFFLINE := 1
export YOLO_AUTOINSTALL := False
export YOLO_CONFIG_DIR := $(CURDIR)/.cache/ultralytics
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: setup browser repro test bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch and torchvision first: they install from the local wheel store in about a minute
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	# facenet-pytorch (MTCNN for the ID benchmark; its weights ship in the wheel) pins torch<2.3 and
	# numpy<2 in its metadata although its code runs on ours: install it without its pins
	$(BIN)/python -m pip install --quiet --no-deps facenet-pytorch==2.6.0
	# nvidia-cudnn-frontend (the attention backend "cudnn") also requires the CUTLASS DSL, ~200 MB of wheels for
	# kernels we never call: its graph API needs only the cuDNN library torch brings
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt nvidia-cudnn-frontend
	touch $@

setup: $(VENV)/.installed

# Debian's Chromium renders the leaderboard page in the browser test (headless, offline).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || echo "warning: could not install chromium; the browser test will say it was skipped"

repro: setup
	test -d .git || git init -q
	$(BIN)/dvc config --local core.analytics false
	$(BIN)/dvc config --local core.check_update false
	$(BIN)/dvc repro

test: setup browser
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_world.py

clean:
	rm -rf data reports/dataset reports/dataset.md reports/dataset_stats.json reports/logs
