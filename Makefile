# Two entry points for a fresh clone: `make demo` and `make test`. Each sets up .venv when missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export PYTHONHASHSEED := 0
export MPLBACKEND := Agg

.PHONY: demo test install clean-demo experiments seeds

$(STAMP): requirements.lock pyproject.toml web/package-lock.json scripts/plots_template.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	# Vega for offline `dvc plots show` pages: web/plots.html + plots.html_template in .dvc/config.local
	if command -v npm >/dev/null 2>&1; then \
		(cd web && npm ci --ignore-scripts --no-audit --no-fund --silent) && $(BIN)/python scripts/plots_template.py; \
	else echo "npm not found: dvc plots show will load Vega from a CDN (install node + npm, rm $(STAMP), make install)"; fi
	touch $(STAMP)

install: $(STAMP)

# Demo: materialise the synthetic dataset when data/ is absent, then run the whole DVC pipeline
# with CPU-sized overrides (the real baseline stays the default in params.yaml).
demo: $(STAMP)
	$(BIN)/python scripts/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=30 tests

# The guide's matrix through the GPU-aware runner (one GPU per experiment, as many at a time as GPUs):
# make experiments PHASE=losses ARGS="-S model.arch=unet3plus -j 8"; make seeds ARGS=@experiments/studies/NAME/best_params.txt
PHASE ?= all
experiments: $(STAMP)
	$(BIN)/python scripts/queue_experiments.py --phase $(PHASE) $(ARGS)

seeds: $(STAMP)
	$(BIN)/python scripts/seeds.py $(ARGS)
