# MergeMix — `make demo` and `make test` install everything they need from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | cksum | cut -d' ' -f1)
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# make test's pytest workers: one per core, at most 4 (each builds the session's micro run once)
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))

.PHONY: install demo test test-all test-postgres gpu-check gpu-plan lint bench reproduce frontier clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
	# CPU torch first (pinned): a bare torch requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip check
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

demo: install  ## the main job on the embedded default (~10 min on 2 cores; a second run reuses the cache)
	$(BIN)/mergemix run

test: install  ## fast tier, one worker per core (TEST_WORKERS=0: in this process)
	WANDB_MODE=disabled $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

test-all: install  ## fast and slow tiers
	WANDB_MODE=disabled $(BIN)/pytest -q -m "slow or not slow"

test-postgres: install  ## Optuna workers on a real PostgreSQL study (server: Debian's postgresql package)
	WANDB_MODE=disabled $(BIN)/pytest -q -m slow tests/test_postgres.py

gpu-check: install  ## one GPU: FSDP/bf16 training of a ~1B model, the candidate loop; tokens/s, MFU, candidates/h
	scripts/gpu_check.sh

gpu-plan: install  ## moe_8b/16b on 8 x H100 on paper (meta device, no GPU) -> reports/gpu_check/plan.md
	$(BIN)/python scripts/gpu_check.py --plan --expert-tokens 1e9 --out reports/gpu_check/plan.md

lint: install
	$(BIN)/ruff check mergemix tests experiments bench scripts conf
	$(BIN)/ruff format --check mergemix tests experiments bench scripts conf

bench: install  ## hot paths vs their baselines -> reports/bench.{md,json,png} (~10 min; BENCH_ARGS="--quick" or "--threads 1")
	$(BIN)/python bench/bench.py $(BENCH_ARGS)

reproduce: install  ## paper-table analogues on the embedded testbed -> reports/reproduce/<size>/ (REPRODUCE_ARGS="--size tiny")
	$(BIN)/python experiments/reproduce.py $(REPRODUCE_ARGS)

clean:
	rm -rf outputs

frontier: install  ## cost-quality frontier of mixture searches on two testbeds -> reports/frontier/ (~175 min on 2 idle cores, estimated from its parts; resumable)
	$(BIN)/python experiments/frontier.py $(FRONTIER_ARGS)
