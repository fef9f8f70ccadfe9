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

.PHONY: setup run test bench prepare sample verify dedup export iterate status clean distclean

setup: $(STAMP) $(MODEL)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[$(EXTRA),dev]"
	@# pip resolves these to CUDA builds that break `import transformers` and `from vllm import LLM`
	@# on CPU; text generation needs none of them.
	@if [ "$(EXTRA)" = cpu ]; then $(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true; fi
	@touch $@

$(MODEL): | $(STAMP)
	$(SI) model default

run: setup
	$(SI) run $(ARGS)

test: setup
	$(BIN)/python -m pytest -q

status: | $(STAMP)
	@$(SI) status $(ARGS)

# One target per stage; `make iterate ITER=k` makes iteration k's export.
$(IT)/problems/_SUCCESS: $(CONFIG) | $(STAMP)
	$(SI) prepare $(ARGS)
$(IT)/samples/_SUCCESS: $(IT)/problems/_SUCCESS $(CONFIG) | $(MODEL)
	$(SI) sample $(ARGS)
$(IT)/verified/_SUCCESS: $(IT)/samples/_SUCCESS $(CONFIG)
	$(SI) verify $(ARGS)
$(IT)/selected/_SUCCESS: $(IT)/verified/_SUCCESS $(CONFIG)
	$(SI) dedup $(ARGS)
$(IT)/export/_SUCCESS: $(IT)/selected/_SUCCESS $(CONFIG)
	$(SI) export $(ARGS)

prepare: $(IT)/problems/_SUCCESS
sample: $(IT)/samples/_SUCCESS
verify: $(IT)/verified/_SUCCESS
dedup: $(IT)/selected/_SUCCESS
export: $(IT)/export/_SUCCESS
iterate: $(IT)/export/_SUCCESS

clean:
	rm -rf $(RUN)

distclean:
	rm -rf data/runs data/models data/cache $(VENV)
