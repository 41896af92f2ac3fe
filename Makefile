# Two commands on a fresh Debian machine with Python 3.11:
#   make demo   install (once) and serve the app on the bundled demo at http://127.0.0.1:7860
#   make test   install what the tests need (once; Debian chromium included) and run the whole suite
# Both are idempotent: a stamp named after the requirement files' hash skips re-installs.

PYTHON ?= python3
VENV   ?= .venv
# MODEL: a CLIP checkpoint for `make demo`; empty = the app's default (deft.core.schema.DEFAULT_MODEL)
MODEL  ?=
ARGS   ?=
HASH_RT  := $(shell cat requirements.txt requirements-app.txt | sha1sum | cut -c1-12)
HASH_DEV := $(shell cat requirements.txt requirements-app.txt requirements-hf.txt requirements-dev.txt | sha1sum | cut -c1-12)
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint chromium demo-offline bench

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip

$(VENV)/.rt-$(HASH_RT): requirements.txt requirements-app.txt | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install -q -r requirements.txt -r requirements-app.txt
	$(VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.rt-* && touch $@

$(VENV)/.dev-$(HASH_DEV): requirements.txt requirements-app.txt requirements-hf.txt requirements-dev.txt | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install -q -r requirements-dev.txt
	$(VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.dev-* && touch $@

demo: $(VENV)/.rt-$(HASH_RT)
	$(VENV)/bin/python app.py $(if $(MODEL),--model "$(MODEL)") $(ARGS)

# Try the whole flow with no internet: a tiny random CLIP (detections are meaningless, the workflow is real).
demo-offline: $(VENV)/.rt-$(HASH_RT)
	$(VENV)/bin/python -m deft.testing runs/tiny-clip
	HF_HUB_OFFLINE=1 $(VENV)/bin/python app.py --model runs/tiny-clip $(ARGS)

chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

test: $(VENV)/.dev-$(HASH_DEV) chromium
	$(VENV)/bin/python -m pytest tests -q --durations=10

lint: $(VENV)/.dev-$(HASH_DEV)
	$(VENV)/bin/ruff check .

bench: $(VENV)/.dev-$(HASH_DEV)
	$(VENV)/bin/python bench/review_latency.py
