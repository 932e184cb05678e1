# `make demo` and `make test` set everything up on a fresh machine: a virtual environment at .venv,
# trainlab installed in it (editable, with its test and export extras for `make test`), then they run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.trainlab-installed

.PHONY: demo test browser bench clean lint

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	@echo "installing trainlab and its dependencies into $(VENV) (torch comes from pip; a few minutes the first time)"
	@$(PY) -m pip install -q -e ".[test,export]" 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import trainlab, torch, torchvision" && touch $(STAMP)

demo: $(STAMP)
	@$(VENV)/bin/trainlab train

# Debian's Chromium renders report.html in the browser test; when it cannot be installed the test
# is skipped with the reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  echo "installing Debian's chromium for the report.html browser test" && \
	  timeout 300 apt-get update -q >/dev/null 2>&1 && \
	  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q chromium >/dev/null 2>&1 ; } || \
	  echo "note: chromium could not be installed; the browser test of report.html will be skipped"

test: $(STAMP) browser lint
	TQDM_DISABLE=1 $(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: $(STAMP)
	@$(PY) -m pip install -q -e ".[bench]" 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) benchmarks/bench_loops.py

clean:
	rm -rf runs .pytest_cache
