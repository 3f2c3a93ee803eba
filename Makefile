# lightning-vl: every target bootstraps its own virtual environment on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

TASK ?= nlvr2
# the demo model: configs/model/$(BACKBONE)-tiny.yaml, starting from the demo's θ_0 $(DEMO_DIR)/$(BACKBONE)-tiny.pt
# (uniter: make pretrain; lxmert: make pretrain-lxmert; vilt: make pretrain-vilt)
BACKBONE ?= uniter
# PRUNE, SPARSITY, SCHEDULE: empty = the lottery's defaults (ImpConfig, lightning_vl/lottery/config.py)
PRUNE ?=
SPARSITY ?=
SCHEDULE ?=
REWIND ?= 0
INIT ?=
ARGS ?=
DEMO_DIR ?= data/demo
RUNS ?= runs
TEXT_PRETRAIN_STEPS ?= 1000
PRETRAIN_STEPS ?= 1000
PRETRAIN_ARGS ?= --trainer.enable_progress_bar false
# θ_0's batches are built in a DataLoader worker: θ_0 is the longer of the two pre-trainings, and the
# batches are the same with any number of workers (data_modules/pretraining/stream.py), so θ_0 is too
PRETRAIN_WORKERS ?= 1

export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

# the tasks, as the package lists them (lightning_vl/tasks/names.py imports only the standard library,
# so any python3 reads it, before the venv exists); `=`: asked only by the recipes that use it
TASK_NAMES = $(shell $(PYTHON) -m lightning_vl.tasks.names)

.PHONY: install demo pretrain pretrain-lxmert pretrain-vilt check-backbone prune branch finetune study report overlap features data test bench clean help check-task

help:
	@echo "make prune TASK=<task> [BACKBONE=uniter|lxmert|vilt] [PRUNE=<strategy>] [SPARSITY=<target>] [SCHEDULE=linear|geometric] [REWIND=0] [INIT=ckpt]"
	@echo "  (strategies, their options and the defaults: lightning-vl prune --help, or python -m lightning_vl.pruning)"
	@echo "make branch FROM=runs/<task>/<run>/round_NN KIND=random|shuffle|reinit|ticket|transfer [TO=<task> (transfer)] [INIT=<init>|none (reinit)] [STRATEGY=global|layerwise] [SEED=0]"
	@echo "make finetune TASK=<task> [MASK=round_NN/mask.pt] [INIT=ckpt]"
	@echo "make features SRC=<path...> FORMAT=tsv|butd-h5|img-db|npz OUT=<store.h5>"
	@echo "make data TASK=<task> SRC=<folder with the public annotation files>"
	@echo "make study STUDY=table1|table3|table4|universal|transfer|rewind|adversarial [TASKS='nlvr2 vqa'] [SEEDS='0 1'] [REAL=1] | make report [RUNS=runs] [MASKS='vqa=…/mask.pt …']"
	@echo "make overlap MASKS='vqa=runs/vqa/imp-…/round_07/mask.pt nlvr2=…' | make pretrain (the demo's θ'_0 and θ_0)"
	@echo "make pretrain-lxmert | make pretrain-vilt (the demo's LXMERT / ViLT θ_0)"
	@echo "make test | make bench | make demo | make clean"
	@echo "tasks: $(TASK_NAMES)"

check-task:
	@tasks="$(TASK_NAMES)"; test -n "$$tasks" || { echo "could not list the tasks: $(PYTHON) -m lightning_vl.tasks.names failed"; exit 2; }; \
	case " $$tasks " in *" $(TASK) "*) ;; *) echo "unknown TASK=$(TASK); one of: $$tasks"; exit 2;; esac

install: $(STAMP)

# The head of a recipe that builds a shared file (the venv, the demo world, θ_0): it holds $@.lock for
# the rest of the recipe's shell, so two makes at once (two study workers) never build it together;
# the second waits, then stops if the first built it meanwhile (lightning_vl/tools/buildlock.py).
LOCK = mkdir -p $(@D) && exec 9>$@.lock && { $(PYTHON) -m lightning_vl.tools.buildlock 9 $@ $^; s=$$?; \
  test $$s -eq 3 && exit 0; test $$s -eq 0 || exit $$s; }

# torch first, pinned to the local CPU wheel; setup.cfg's range accepts it, so pip installs no other build.
$(STAMP): setup.cfg pyproject.toml
	@$(LOCK); set -ex; \
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
	$(BIN)/python -m pip install -q --upgrade pip; \
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION); \
	$(BIN)/python -m pip install -q -e '.[dev]'; \
	touch $@

demo: $(DEMO_DIR)/.complete

# regenerated when the code or model size that makes it changes
$(DEMO_DIR)/.complete: $(STAMP) $(wildcard data_modules/demo/*.py) configs/model/uniter-tiny.yaml
	@$(LOCK); set -x; $(BIN)/lightning-vl demo --out $(DEMO_DIR)

# the demo's models, pre-trained on the demo world: the text-only θ'_0 (MLM on the captions alone, a
# HuggingFace BERT folder) and θ_0 (UNITER's objectives with the demo's recipe, configs/demo/pretrain.yaml,
# from a random init), side by side with one thread each
DEMO_BERT := $(DEMO_DIR)/bert-tiny/model.safetensors
DEMO_MODEL := $(DEMO_DIR)/uniter-tiny.pt
PRETRAINED := $(DEMO_DIR)/.pretrained
PRETRAIN := $(BIN)/lightning-vl fit --config configs/task/pretrain.yaml --config configs/model/uniter-tiny.yaml \
  --config configs/demo.yaml --config configs/demo/pretrain.yaml --trainer.enable_checkpointing false \
  --trainer.logger CSVLogger --trainer.logger.save_dir $(DEMO_DIR)/pretraining --trainer.callbacks+=lightning_vl.model.export.ExportWeights

pretrain: $(PRETRAINED)

PRETRAIN_CODE := lightning_vl/tasks/pretraining.py lightning_vl/tasks/optimal_transport.py data_modules/pretrain.py \
  $(wildcard data_modules/pretraining/*.py) \
  configs/task/pretrain.yaml configs/demo/pretrain.yaml configs/demo/pretrain-text.yaml

$(DEMO_BERT) $(DEMO_MODEL): $(PRETRAINED)

$(PRETRAINED): $(DEMO_DIR)/.complete $(PRETRAIN_CODE)
	@$(LOCK); mkdir -p $(DEMO_DIR)/pretraining; \
	echo "pre-training the demo's θ'_0 (text only; log $(DEMO_DIR)/pretraining/text.log) and θ_0 side by side"; \
	OMP_NUM_THREADS=1 $(PRETRAIN) --config configs/demo/pretrain-text.yaml --trainer.callbacks.path $(DEMO_DIR)/bert-tiny \
	  --trainer.callbacks.layout bert --model.init null --trainer.logger.name text \
	  --trainer.max_steps $(TEXT_PRETRAIN_STEPS) --trainer.val_check_interval $(TEXT_PRETRAIN_STEPS) \
	  --trainer.enable_progress_bar false > $(DEMO_DIR)/pretraining/text.log 2>&1 & text=$$!; \
	OMP_NUM_THREADS=1 $(PRETRAIN) --trainer.callbacks.path $(DEMO_MODEL) --trainer.callbacks.layout uniter \
	  --model.init null --trainer.logger.name uniter --data.init_args.num_workers $(PRETRAIN_WORKERS) \
	  --trainer.max_steps $(PRETRAIN_STEPS) --trainer.val_check_interval $(PRETRAIN_STEPS) \
	  --model.warmup_steps $$(( $(PRETRAIN_STEPS) / 10 )) $(PRETRAIN_ARGS); vl=$$?; \
	wait $$text; tx=$$?; \
	if [ $$tx -ne 0 ]; then tail -n 25 $(DEMO_DIR)/pretraining/text.log; echo "text-only pre-training failed (exit $$tx)"; fi; \
	test $$vl -eq 0 -a $$tx -eq 0 && touch $@

# LXMERT's and ViLT's demo θ_0: the tiny model pre-trained on the demo world through the backbone seam
# with the demo's recipe and configs/demo/pretrain-<backbone>.yaml on top, from a random init, one
# thread. LXMERT: plus a region objective (MRFR); ViLT: MLM and ITM on the drawn images (its own
# objectives; no regions, so no region objective)
DEMO_LXMERT := $(DEMO_DIR)/lxmert-tiny.pt
DEMO_VILT := $(DEMO_DIR)/vilt-tiny.pt

pretrain-lxmert: $(DEMO_LXMERT)
pretrain-vilt: $(DEMO_VILT)

$(DEMO_LXMERT) $(DEMO_VILT): $(DEMO_DIR)/%-tiny.pt: $(DEMO_DIR)/.complete $(PRETRAIN_CODE) configs/model/%-tiny.yaml configs/demo/pretrain-%.yaml
	@$(LOCK); mkdir -p $(DEMO_DIR)/pretraining; \
	echo "pre-training the demo's $* θ_0 ($(PRETRAIN_STEPS) steps, one thread)"; \
	OMP_NUM_THREADS=1 $(BIN)/lightning-vl fit --config configs/task/pretrain.yaml --config configs/model/$*-tiny.yaml \
	  --config configs/demo.yaml --config configs/demo/pretrain.yaml --config configs/demo/pretrain-$*.yaml \
	  --trainer.enable_checkpointing false --trainer.logger CSVLogger --trainer.logger.save_dir $(DEMO_DIR)/pretraining \
	  --trainer.callbacks+=lightning_vl.model.export.ExportWeights --trainer.callbacks.path $@ \
	  --trainer.callbacks.layout checkpoint --model.init null --trainer.logger.name $* \
	  --data.init_args.num_workers $(PRETRAIN_WORKERS) \
	  --trainer.max_steps $(PRETRAIN_STEPS) --trainer.val_check_interval $(PRETRAIN_STEPS) \
	  --model.warmup_steps $$(( $(PRETRAIN_STEPS) / 10 )) $(PRETRAIN_ARGS)

# the demo model of BACKBONE and what builds its θ_0; UNITER's commands are exactly as before
# (configs/demo.yaml already names data/demo/uniter-tiny.pt)
MODEL_CONFIG = configs/model/$(BACKBONE)-tiny.yaml
MODEL_PRETRAIN = $(if $(filter uniter,$(BACKBONE)),pretrain,pretrain-$(BACKBONE))
MODEL_INIT = $(if $(filter uniter,$(BACKBONE)),,--model.init $(DEMO_DIR)/$(BACKBONE)-tiny.pt)

# a backbone that reads pixels (ViLT) has the demo's images as its data: configs/demo/pixels/<backbone>.yaml,
# stacked after the task's demo data (images: data/demo/images.h5, the resize for its patch size); only
# the tasks whose data modules read images run on it (lightning_vl.tasks.names --images)
PIXEL_CONFIG = $(wildcard configs/demo/pixels/$(BACKBONE).yaml)
IMAGE_TASKS = $(shell $(PYTHON) -m lightning_vl.tasks.names --images)
DEMO_BACKBONES = $(patsubst configs/model/%-tiny.yaml,%,$(wildcard configs/model/*-tiny.yaml))

check-backbone:
	@test -f $(MODEL_CONFIG) || { echo "unknown BACKBONE=$(BACKBONE): no $(MODEL_CONFIG) (one of: $(DEMO_BACKBONES))"; exit 2; }
	@pixels="$(PIXEL_CONFIG)"; test -z "$$pixels" || case " $(IMAGE_TASKS) " in *" $(TASK) "*) ;; *) \
	  echo "BACKBONE=$(BACKBONE) reads images ($$pixels), and the data of TASK=$(TASK) are region features only: TASK must be one of $(IMAGE_TASKS)"; exit 2;; esac

prune: check-task check-backbone $(MODEL_PRETRAIN)
	$(BIN)/lightning-vl prune \
	  --config configs/task/$(TASK).yaml --config $(MODEL_CONFIG) --config configs/demo.yaml --config configs/demo/$(TASK).yaml \
	  $(if $(PIXEL_CONFIG),--config $(PIXEL_CONFIG)) \
	  $(if $(PRUNE),--imp.method $(PRUNE)) $(if $(SPARSITY),--imp.target_sparsity $(SPARSITY)) $(if $(SCHEDULE),--imp.schedule $(SCHEDULE)) \
	  --imp.rewind_step $(REWIND) --imp.root $(RUNS) --imp.save_trained true $(MODEL_INIT) $(if $(INIT),--model.init $(INIT)) $(ARGS)

# a branch of a trained round: the source run's settings (KIND=transfer: TO's files of the same stack)
branch: pretrain
	@test -n "$(FROM)" -a -n "$(KIND)" || { echo "usage: make branch FROM=runs/<task>/<run>/round_NN KIND=random|shuffle|reinit|ticket|transfer [TO=<task>] [INIT=<init>|none]"; exit 2; }
	$(BIN)/lightning-vl branch --from $(FROM) --kind $(KIND) $(if $(TO),--task $(TO)) \
	  $(if $(INIT),--model.init $(if $(filter none,$(INIT)),null,$(INIT))) \
	  $(if $(STRATEGY),--branch.strategy $(STRATEGY)) $(if $(SEED),--branch.seed $(SEED)) $(ARGS)

# a study of the paper (configs/study/<STUDY>-demo.yaml on the demo; STUDY=table1 REAL=1 for real data)
STUDY ?= table1
# what a demo study starts from: the demo's θ_0 of its backbone (Table 3 is LXMERT's, Table 4
# ViLT's); real data: nothing
STUDY_NEEDS = $(if $(REAL),$(STAMP),$(if $(filter table3,$(STUDY)),pretrain-lxmert,$(if $(filter table4,$(STUDY)),pretrain-vilt,pretrain)))
study: $(STUDY_NEEDS)
	$(BIN)/lightning-vl study configs/study/$(STUDY)$(if $(REAL),,-demo).yaml --runs $(RUNS) \
	  $(if $(TASKS),--tasks $(TASKS)) $(if $(SEEDS),--seeds $(SEEDS)) $(ARGS)

report: $(STAMP)
	$(BIN)/lightning-vl report --runs $(RUNS) --out $(or $(OUT),reports) $(if $(MASKS),--mask $(MASKS)) $(ARGS)

overlap: $(STAMP)
	$(BIN)/lightning-vl overlap $(MASKS) --out $(or $(OUT),reports/overlap)

finetune: check-task check-backbone $(MODEL_PRETRAIN)
	$(BIN)/lightning-vl fit \
	  --config configs/task/$(TASK).yaml --config $(MODEL_CONFIG) --config configs/demo.yaml --config configs/demo/$(TASK).yaml \
	  $(if $(PIXEL_CONFIG),--config $(PIXEL_CONFIG)) $(MODEL_INIT) $(if $(INIT),--model.init $(INIT)) $(if $(MASK),--model.mask $(MASK)) $(ARGS)

features: $(STAMP)
	@test -n "$(SRC)" -a -n "$(OUT)" || { echo "usage: make features SRC=<path...> FORMAT=<format> OUT=<store.h5>"; exit 2; }
	$(BIN)/python -m data_modules.convert features --src $(SRC) $(if $(FORMAT),--format $(FORMAT)) --out $(OUT) $(ARGS)

data: check-task $(STAMP)
	@test -n "$(SRC)" || { echo "usage: make data TASK=<task> SRC=<folder with the public annotation files>"; exit 2; }
	$(BIN)/lightning-vl data --task $(TASK) --src $(SRC) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m lightning_vl.tools.bench $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
