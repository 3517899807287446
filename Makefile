# agentstream: two commands on a fresh machine with Python 3.11+ and pip.
#   make run    create .venv if missing, install, start everything (agentstream up)
#   make test   create .venv if missing, install the test extras, run the whole suite
#   make lint   ruff over the code, tests and benchmark; mypy --strict over the packages

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test unit lint soak bench schemas check docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/agentstream up

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Pure code only (tests/unit: no processes, Quart's test client): seconds.
unit: $(VENV)/.installed-test
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/mypy

# Regenerate schemas/json/*.schema.json from the models (a test fails when they drift).
schemas: $(VENV)/.installed-run
	$(BIN)/python -m schemas.jsonschema

# Validate the agent files.
check: $(VENV)/.installed-run
	$(BIN)/agentstream agents check

clean:
	rm -rf $(VENV) .agentstream .pytest_cache .mypy_cache .ruff_cache

# Refresh the README's settings table from agentstream/settings.py (a test fails when it is stale).
docs: $(VENV)/.installed-run
	$(BIN)/python -c "import re,subprocess,sys; t=subprocess.run([sys.executable,'-m','agentstream','config','--markdown'],capture_output=True,text=True,check=True).stdout.strip(); p='README.md'; s=open(p).read(); s=re.sub(r'(<!-- settings:start[^>]*-->\n).*?(\n<!-- settings:end -->)', lambda m: m.group(1)+t+m.group(2), s, flags=re.S); open(p,'w').write(s)"

# Opt-in soak test: SOAK_RUNS runs (default 1000) while runners are killed at random.
soak: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m soak -s -p no:cacheprovider --timeout 1800 tests/system/test_soak.py

# The benchmark: starts its own system, writes bench/results.json and bench/RESULTS.md (a few minutes).
bench: $(VENV)/.installed-test
	$(BIN)/python -m bench
