# The two commands of the README. Each sets up everything it needs on a fresh machine.
#   make run    reconstruct the embedded default collection with the bundled model
#   make test   install the project with its test extras and run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test run install clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

run: $(STAMP)
	$(VENV)/bin/zipmap demo --out demo

clean:
	rm -rf $(VENV) .pytest_cache
