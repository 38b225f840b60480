# udrl-search: every target creates the virtual environment itself when it is missing.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO_WS ?= demo-workspace
UDRL    := $(BIN)/udrl --config plugin/presets/demo.toml --workspace $(DEMO_WS)

.PHONY: setup demo test test-all bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## demo: offline end to end — distil with the builtin teacher, train the UDRL rewriter and the
## intent model, evaluate, and rewrite a few queries.
demo: $(STAMP)
	$(UDRL) distill
	$(UDRL) train
	$(UDRL) train-intent
	$(UDRL) eval-rewriter --commands 300
	$(UDRL) rewrite "cozy cabin in the snow" --task image --length 12 -n 3
	$(UDRL) rewrite "holiday sale" --task template --length 10 -n 3
	$(UDRL) intent "birthday party invitation"

test: $(STAMP)
	$(BIN)/python -m pytest

## test-all: also the slow tests (live Elasticsearch tests still need UDRL_ES_URL)
test-all: $(STAMP)
	$(BIN)/python -m pytest -m 'not elasticsearch'

bench: $(STAMP)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(DEMO_WS) .pytest_cache
