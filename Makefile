# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Re-install whenever pyproject.toml changes: the stamp is named by its hash.
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
# Releases that lie on this machine's disk; aarch64 gets the CPU build that exists there.
ifeq ($(shell uname -m),aarch64)
TORCH := torch==2.9.1 torchvision==0.24.1
else
TORCH := torch==2.14.1 torchvision==0.29.1
endif
export RAY_AUTH_MODE := disabled
PYTEST_ARGS ?=

.PHONY: venv demo test bench corpus labels pipeline evaluate hpo-benchmark hpo-benchmark-ood external clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[all,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

demo: venv
	$(VENV)/bin/tevid-hpo demo

test: venv
	$(PY) -m pytest -q -m "not slow" --timeout=900 $(PYTEST_ARGS)

bench: venv
	$(PY) -m experiments.bench_overhead
	$(PY) -m experiments.bench_storage

# The data factory corpus (~1,000 runs, Ray on all cores; resumable) under ~/.cache/tevid-hpo.
corpus: venv
	$(PY) -m experiments.factory

labels: venv
	$(PY) -m experiments.label

# Corpus (if missing) → labels → DYNAMICS-MAE → TEViD → calibration → shipped checkpoint.
pipeline: venv
	$(PY) -m experiments.pipeline

# Every method on the held-out test split → docs/results.md (Tables 3, 4, 12, 15–19).
evaluate: venv
	$(PY) -m experiments.evaluate

# Appendix M: Hyperband vs + Curve-TCN vs + TEViD (Optuna and Ray Tune) → docs/results.md.
hpo-benchmark: venv
	$(PY) -m experiments.hpo_benchmark write_results=true

# Issue 25's out-of-distribution tasks, 5 seeds each, trials recorded on every core (hours on
# 2 cores; resumable; reports under ~/.cache/tevid-hpo/hpo_benchmark/report-<task>, docs/ untouched).
hpo-benchmark-ood: venv
	for t in gru_text gn_cnn_gratings transformer_text; do \
	  $(PY) -m experiments.hpo_benchmark task=$$t 'seeds=[0,1,2,3,4]' workers=$$(nproc) || exit 1; done

# Issue 23's external suite: user-written runs through TrialMonitor (cached, resumable under
# ~/.cache/tevid-hpo/external), every method scored → docs/results.md "External suite" sections.
external: venv
	$(PY) -m experiments.external

clean-venv:
	rm -rf $(VENV)
