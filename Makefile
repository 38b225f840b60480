# udrl-search: every target creates the virtual environment itself when it is missing.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO_WS ?= demo-workspace
UDRL    := $(BIN)/udrl --config plugin/presets/demo.toml --workspace $(DEMO_WS)

.PHONY: setup demo test test-all test-reliability bench clean compose-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## demo: offline end to end — sample catalogue and both indexes, builtin-teacher distillation,
## UDRL training, intent model, evaluation, precomputed head rewrites, then a table of queries.
demo: $(STAMP)
	$(UDRL) catalog $(DEMO_WS)/catalog --images 160 --templates 400
	$(UDRL) index images $(DEMO_WS)/catalog/images.jsonl
	$(UDRL) index templates $(DEMO_WS)/catalog/templates.jsonl
	$(UDRL) distill
	$(UDRL) train
	$(UDRL) train-intent
	$(UDRL) eval-rewriter --commands 200
	$(UDRL) rewrite-batch plugin/presets/head_queries.txt
	$(UDRL) demo

test: $(STAMP)
	$(BIN)/python -m pytest

## test-all: also the slow tests (live Elasticsearch tests still need UDRL_ES_URL)
test-all: $(STAMP)
	$(BIN)/python -m pytest -m 'not elasticsearch'

## test-reliability: the serving and publishing failures reproduced under load (a few minutes)
test-reliability: $(STAMP)
	$(BIN)/python -m pytest -m reliability

bench: $(STAMP)
	$(BIN)/python -m bench.run

## compose-check: `docker compose config -q` on docker/docker-compose.yml where Docker Compose
## exists; everywhere (with .venv) a structural check too: required services and keys, UDRL_*
## names and values against plugin.config.Settings, `udrl` command lines, ES server vs client,
## the service published on loopback unless it has an API key, and every file of the workspace
## (UDRL_WORKSPACE_DIR, else $(DEMO_WS)) readable by the container's user.
compose-check:
	@if docker compose version >/dev/null 2>&1; then \
		docker compose -f docker/docker-compose.yml config -q || exit 1; \
		echo "compose-check: docker compose config OK"; \
		if [ -x $(BIN)/python ]; then DEMO_WS=$(DEMO_WS) $(BIN)/python docker/check_compose.py; fi; \
	else \
		echo "compose-check: docker compose is not available; checking the file with Python"; \
		$(MAKE) -s $(STAMP) && DEMO_WS=$(DEMO_WS) $(BIN)/python docker/check_compose.py; \
	fi


clean:
	rm -rf $(DEMO_WS) .pytest_cache
