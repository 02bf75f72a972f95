# One entry point. `make demo` and `make test` each create .venv if missing and install
# everything pinned (requirements.txt) before running.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv demo test benchmark clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/scorerefine demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 Testing $(PYTEST_ARGS)

benchmark: $(STAMP)
	$(VENV)/bin/scorerefine benchmark --preset full --with-report docs/benchmark-real.json --with-report docs/benchmark-real-abdomen.json --with-report docs/benchmark-real-abdomen-x2.json --with-report docs/benchmark-real-abdomen-seen.json

clean:
	rm -rf $(VENV) build *.egg-info demo_output
