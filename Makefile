# Two entry points: `make demo` runs the curation pipeline on its built-in demo, `make test` runs the suite.
# Both create the virtual environment (.venv) when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bbst-installed

.PHONY: demo test test-fast browser lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip wheel setuptools
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) pipelines/build_bbst.py

# Debian's chromium drives the web-app tests; installing it needs root and the Debian mirror.
# Tests that need it skip with a clear reason when it cannot be installed.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 || \
	  echo "note: chromium not installed; browser tests will be skipped"; }

test: $(STAMP) browser
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf bbst-demo .pytest_cache
