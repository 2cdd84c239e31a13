# Meterflow: the README's commands. `make test` and `make demo` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test lint typecheck miniprogram-test demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[edge,cloud,sim,dev]'
	touch $(STAMP)

# the console's front-end packages (htmx, ECharts) from package-lock.json; without npm the console
# still starts and says in the page that its live parts and charts are off
CONSOLE_ASSETS := cloud/console/node_modules/.package-lock.json
$(CONSOLE_ASSETS): cloud/console/package.json cloud/console/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix cloud/console --no-audit --no-fund --ignore-scripts --loglevel=error; \
	else echo "npm not found: the console runs without htmx and ECharts (apt-get install npm)"; fi

install: $(STAMP) $(CONSOLE_ASSETS)

lint: install
	$(PY) -m ruff check .

typecheck: install
	$(PY) -m mypy

test: install lint typecheck miniprogram-test
	@echo "coverage floor for the codecs and the money rules (protocol/, cloud/domain/):"
	$(PY) -m pytest -q tests/protocol tests/cloud/domain -p no:cacheprovider \
		--cov=protocol --cov=cloud.domain --cov-report=term:skip-covered --cov-fail-under=95
	@echo "the whole suite:"
	$(PY) -m pytest $(PYTEST_ARGS)

# The WeChat mini-program's unit tests (miniprogram/, jest + miniprogram-simulate): npm ci from the
# committed lock file, then jest. Without node/npm they are skipped, unless MF_REQUIRE_SERVICES=1 (CI).
miniprogram-test:
	@if command -v npm >/dev/null 2>&1; then \
		cd miniprogram && npm ci --no-audit --no-fund --loglevel=error && npm test --silent; \
	elif [ "$$MF_REQUIRE_SERVICES" = "1" ]; then \
		echo "miniprogram: node and npm are required (MF_REQUIRE_SERVICES=1)" >&2; exit 1; \
	else \
		echo "miniprogram: node/npm not found - skipping the mini-program tests (install Node 20 to run them)"; \
	fi

demo: install
	$(VENV)/bin/meterflow demo

bench: install
	$(PY) bench/codec.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
