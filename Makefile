# spanfaas — two commands: `make run` (platform + demo), `make test` (whole suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench venv clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/pip || { rm -rf $(VENV) && bash scripts/venv.sh $(PY) $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/spanfaas up --demo

test: $(STAMP)
	bash scripts/test-deps.sh
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/runtime.py
	$(BIN)/python bench/gateway.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
