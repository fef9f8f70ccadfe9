# selfimprove: `make run` (set up, then one full iteration on the embedded default) and `make test`.
# Stage targets depend on the previous stage's _SUCCESS file, so make reruns only what is stale.
# Variables: CONFIG (run config), ITER (iteration), RUN (run directory), FORCE=1 (rebuild a stage
# whose config changed), BENCH (one benchmark), PYTHON (interpreter for the venv).

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.yaml
ITER ?= 1
RUN ?= data/runs/$(basename $(notdir $(CONFIG)))
IT := $(RUN)/iter-$(ITER)
SI := $(BIN)/selfimprove
ARGS := --config $(CONFIG) --iter $(ITER) --set run.dir=$(RUN) $(if $(FORCE),--force)

# The gpu extra where nvidia-smi sees a GPU, else vLLM for CPU.
EXTRA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP := $(VENV)/.installed-$(EXTRA)
MODEL := data/models/smollm2-135m-instruct/config.json

.PHONY: setup run test bench prepare sample verify rationalize dedup export train evaluate iterate loop report status demo demo-hard compare clean distclean

setup: $(STAMP) $(MODEL)

# pip resolves these to CUDA builds that break `import transformers` and `from vllm import LLM`
# on CPU; text generation needs none of them.
NO_CUDA_EXTRAS := if [ "$(EXTRA)" = cpu ]; then $(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true; fi

# A data run installs the engine's extra only; `make test` adds the dev extra (pytest, Ray, TRL).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[$(EXTRA)]"
	@$(NO_CUDA_EXTRAS)
	@# bubblewrap sandboxes model-written code (the `code` verifier); installed where we can, never fatal
	@command -v bwrap >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && { apt-get install -y -q bubblewrap || { apt-get update -q && apt-get install -y -q bubblewrap; }; } >/dev/null 2>&1) || echo "warning: bubblewrap (bwrap) is not installed and could not be: the code verifier will refuse to run (install the 'bubblewrap' package, or set sandbox: rlimits)"
	@touch $@

$(MODEL): | $(STAMP)
	$(SI) model default

run: setup
	$(SI) run $(ARGS)

STAMP-dev := $(VENV)/.installed-dev
$(STAMP-dev): pyproject.toml | $(STAMP)
	$(BIN)/python -m pip install -q -e ".[$(EXTRA),dev]"
	@$(NO_CUDA_EXTRAS)
	@touch $@

test: setup $(STAMP-dev)
	$(BIN)/python -m pytest -q

# `make bench` runs every benchmark in benchmarks/; `make bench BENCH=dedup` runs one.
bench: setup $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks.run $(if $(BENCH),--only $(BENCH))

# Training needs TRL (extra `train`); installed on first use.
STAMP-train := $(VENV)/.installed-train
$(STAMP-train): pyproject.toml | $(STAMP)
	$(BIN)/python -m pip install -q -e ".[$(EXTRA),train]"
	@$(NO_CUDA_EXTRAS)
	@touch $@

$(VENV)/.installed-bench: pyproject.toml | $(STAMP-dev) $(STAMP-train)
	$(BIN)/python -m pip install -q -e ".[$(EXTRA),dev,train,bench]"
	@$(NO_CUDA_EXTRAS)
	@touch $@

status: | $(STAMP)
	@$(SI) status --config $(CONFIG) --set run.dir=$(RUN)

# One target per stage, for any iteration k: data/runs/<run>/iter-<k>/<stage dir>/_SUCCESS.
# Each depends on the stage before it and on the config, so make reruns only what is stale; a
# stage whose config or input changed is rebuilt (make passes --force; the bare CLI refuses).
# Iteration k samples with the model trained in iteration k-1; iteration 0 is the base model,
# evaluated only.
R := $(RUN)/iter-
args = --config $(CONFIG) --iter $(1) --set run.dir=$(RUN) --force
ITERS ?= 3
LAST := $(shell echo $$(( $(ITER) > $(ITERS) ? $(ITER) : $(ITERS) )))

# Explicit rules per iteration (a pattern rule may not appear twice in one chain, and
# iteration k's chain runs through iteration k-1's).
define iteration_rules
$(R)$(1)/problems/_SUCCESS: $(CONFIG) | $(STAMP)
	$(SI) prepare $(call args,$(1))
$(R)$(1)/samples/_SUCCESS: $(R)$(1)/problems/_SUCCESS $(if $(2),$(R)$(2)/model/_SUCCESS) $(CONFIG) | $(MODEL)
	$(SI) sample $(call args,$(1))
$(R)$(1)/verified/_SUCCESS: $(R)$(1)/samples/_SUCCESS $(CONFIG)
	$(SI) verify $(call args,$(1))
$(R)$(1)/rationalized/_SUCCESS: $(R)$(1)/verified/_SUCCESS $(CONFIG)
	$(SI) rationalize $(call args,$(1))
$(R)$(1)/selected/_SUCCESS: $(R)$(1)/rationalized/_SUCCESS $(CONFIG)
	$(SI) dedup $(call args,$(1))
$(R)$(1)/export/_SUCCESS: $(R)$(1)/selected/_SUCCESS $(CONFIG)
	$(SI) export $(call args,$(1))
$(R)$(1)/model/_SUCCESS: $(R)$(1)/export/_SUCCESS $(CONFIG) | $(STAMP-train)
	$(SI) train $(call args,$(1))
$(R)$(1)/eval/_SUCCESS: $(R)$(1)/model/_SUCCESS $(CONFIG) | $(STAMP-train)
	$(SI) evaluate $(call args,$(1))
endef
$(foreach k,$(shell seq 1 $(LAST)),$(eval $(call iteration_rules,$(k),$(filter-out 0,$(shell echo $$(($(k) - 1)))))))

# Iteration 0 is the base model, evaluated only.
$(R)0/eval/_SUCCESS: $(CONFIG) | $(MODEL)
	$(SI) evaluate $(call args,0)

prepare: $(IT)/problems/_SUCCESS
sample: $(IT)/samples/_SUCCESS
verify: $(IT)/verified/_SUCCESS
rationalize: $(IT)/rationalized/_SUCCESS
dedup: $(IT)/selected/_SUCCESS
export: $(IT)/export/_SUCCESS
train: $(IT)/model/_SUCCESS
evaluate: $(IT)/eval/_SUCCESS

# `make iterate ITER=k`: sample -> ... -> export -> train -> evaluate for iteration k, then the report.
iterate: $(IT)/eval/_SUCCESS $(R)0/eval/_SUCCESS
	$(SI) report $(call args,$(ITER))

# `make loop ITERS=3`: the base model's evaluation, then iterations 1..ITERS, each resumable.
loop: setup
	@for k in $$(seq 1 $(ITERS)); do $(MAKE) --no-print-directory iterate ITER=$$k CONFIG=$(CONFIG) RUN=$(RUN) || exit 1; done

# `make demo`: three iterations on configs/demo.yaml, shown to raise held-out accuracy (README).
demo: setup
	$(MAKE) --no-print-directory loop CONFIG=configs/demo.yaml ITERS=3

# `make demo-hard`: the demo beside the same demo with difficulty-aware sampling (configs/demo-hard.yaml,
# sample.until_correct prop2diff), three iterations each, then one comparison per iteration and per
# difficulty bucket (steps=1, steps=2) with paired standard errors in data/runs/demo-hard-compare/.
# Resumes like `make demo`, and reuses a finished `make demo`.
demo-hard: setup
	$(MAKE) --no-print-directory loop CONFIG=configs/demo.yaml ITERS=3
	$(MAKE) --no-print-directory loop CONFIG=configs/demo-hard.yaml ITERS=3
	$(SI) compare data/runs/demo data/runs/demo-hard --iter 1 2 3 --out data/runs/demo-hard-compare

# `make compare`: the demo's iteration 1 trained three ways on the same samples (configs/compare-*.yaml):
# SFT on the verified rationales, DPO on the preference pairs, GRPO with the verifier as reward, each
# evaluated greedily, by CoT-decoding and by maj@k / pass@k; then one table and plot in
# data/runs/compare/. The DPO and GRPO runs start from copies of the SFT run's data stages (their
# configs differ only in `train`, so the fingerprints match and nothing is sampled twice); every
# step resumes like `make iterate`.
COMPARE_ARMS := sft dpo grpo
COMPARE_SHARED := $(addprefix iter-1/,problems samples verified rationalized selected export) iter-0/eval
compare: setup
	$(MAKE) --no-print-directory iterate ITER=1 CONFIG=configs/compare-sft.yaml RUN=data/runs/compare-sft
	@for arm in $(filter-out sft,$(COMPARE_ARMS)); do for d in $(COMPARE_SHARED); do \
	  [ -e data/runs/compare-$$arm/$$d ] || { mkdir -p data/runs/compare-$$arm/$$(dirname $$d) && cp -a data/runs/compare-sft/$$d data/runs/compare-$$arm/$$d; } || exit 1; \
	done; done
	@for arm in $(filter-out sft,$(COMPARE_ARMS)); do \
	  $(MAKE) --no-print-directory iterate ITER=1 CONFIG=configs/compare-$$arm.yaml RUN=data/runs/compare-$$arm || exit 1; done
	$(SI) compare $(addprefix data/runs/compare-,$(COMPARE_ARMS)) --iter 1 --out data/runs/compare

report: | $(STAMP)
	$(SI) report $(call args,$(ITER))

clean:
	rm -rf $(RUN)

distclean:
	rm -rf data/runs data/models data/cache $(VENV)
