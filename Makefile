# Two entry points on a fresh machine: `make demo` and `make test`. Both create/refresh .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bpo-installed
DEMO_OUT ?= outputs/demo

.PHONY: setup demo demo-study demo-sweep demo-safety test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: on CPU-only boxes this version resolves to the CPU build.
	$(PY) -m pip install -q "torch==2.13.0" || $(PY) -m pip install -q torch
	# deepspeed: the engine tests run ZeRO-2/3 on CPU; DS_BUILD_OPS=0 compiles no CUDA/C++ ops at install.
	DS_BUILD_OPS=0 $(PY) -m pip install -q -e ".[dev,openai,deepspeed]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bpo demo --out $(DEMO_OUT)

# 5 seeds x 300 eval images, both training recipes, every claim with its interval; writes README/docs tables
demo-study: $(STAMP)
	$(VENV)/bin/bpo demo --study --out outputs/demo_study --write-docs

# the learning-rate sweep of each training recipe on tuning seeds 100-101 (never reported)
demo-sweep: $(STAMP)
	$(VENV)/bin/bpo demo --sweep --out outputs/demo_sweep

demo-safety: $(STAMP)
	$(VENV)/bin/bpo demo --scenario safety --seeds 3 --out outputs/demo_safety

test: $(STAMP)
	$(VENV)/bin/ruff check bpo tests $(wildcard bench)
	$(VENV)/bin/pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) bench/train_throughput.py
	$(PY) bench/generate_throughput.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
