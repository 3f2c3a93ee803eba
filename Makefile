# lightning-vl: every target bootstraps its own virtual environment on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

TASK ?= nlvr2
PRUNE ?= imp
SPARSITY ?= 0.7
SCHEDULE ?= linear
REWIND ?= 0
INIT ?=
ARGS ?=
DEMO_DIR ?= data/demo
RUNS ?= runs

export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo prune finetune test bench clean help

help:
	@echo "make prune TASK=nlvr2 [PRUNE=imp|random|random-layerwise] [SPARSITY=0.7] [SCHEDULE=linear|geometric] [REWIND=0] [INIT=ckpt]"
	@echo "make test | make bench | make demo | make clean"

install: $(STAMP)

# torch first, pinned to the local CPU wheel; setup.cfg's range accepts it, so pip installs no other build.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: $(DEMO_DIR)/.complete

$(DEMO_DIR)/.complete: $(STAMP)
	$(BIN)/lightning-vl demo --out $(DEMO_DIR)

prune: demo
	$(BIN)/lightning-vl prune \
	  --config configs/task/$(TASK).yaml --config configs/model/uniter-tiny.yaml --config configs/demo.yaml --config configs/demo/$(TASK).yaml \
	  --imp.method $(PRUNE) --imp.target_sparsity $(SPARSITY) --imp.schedule $(SCHEDULE) \
	  --imp.rewind_step $(REWIND) --imp.root $(RUNS) $(if $(INIT),--model.init $(INIT)) $(ARGS)

finetune: demo
	$(BIN)/lightning-vl fit \
	  --config configs/task/$(TASK).yaml --config configs/model/uniter-tiny.yaml --config configs/demo.yaml --config configs/demo/$(TASK).yaml \
	  $(if $(INIT),--model.init $(INIT)) $(if $(MASK),--model.mask $(MASK)) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m lightning_vl.bench $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
