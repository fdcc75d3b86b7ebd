# regablate — set-up, run, test. Everything starts from a clean clone.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-slurm lint bench bench-gpu sanity studies clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev,studies,mlflow]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv: torch first (pinned), then regablate and its dev tools

run: $(STAMP)      ## the default experiment: sparse-synthetic, MLP, no regulariser
	$(BIN)/regablate run

test: $(STAMP)     ## the whole test suite
	$(BIN)/python -m pytest -n 2

test-slurm: $(STAMP) ## stand up a one-node SLURM on this Debian machine (root; idempotent), then run tests/slurm against it
	tests/slurm/start_local_slurm.sh
	$(BIN)/python -m pytest tests/slurm -v

lint: $(STAMP)
	$(BIN)/ruff check regablate tests benchmarks experiments hydra_plugins

bench: $(STAMP)    ## speed against plain hand-written PyTorch, as ratios
	$(BIN)/python benchmarks/bench_runner.py
	$(BIN)/python benchmarks/bench_report.py
	$(BIN)/python benchmarks/bench_cifar.py
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_vectorized.py
	$(BIN)/python benchmarks/bench_vit.py
	$(BIN)/python benchmarks/bench_rnn.py

bench-gpu: $(STAMP) ## on a CUDA machine (< 16 min): resnet20, stacked sweeps at each K and the cifar10_recipe factorial against plain loops; --smoke checks it on the CPU
	$(BIN)/python benchmarks/bench_gpu.py

sanity: $(STAMP)   ## real CIFAR-10 images (../shared/data): resnet20 must learn on the CPU
	$(BIN)/python benchmarks/sanity_cifar.py

studies: $(STAMP)  ## re-run the CPU studies in experiments/ and regenerate their reports, plots and READMEs (~20 min)
	$(BIN)/python experiments/make_studies.py

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
