# One command for the demo, one for the tests: each creates the venv and installs everything it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jtm-installed

.PHONY: setup demo test faults bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch lies on local disk; install it first so nothing pulls a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	# tinysoundfont renders the built-in corpus; its optional pyaudio dependency does not build and is not needed.
	$(PY) -m pip install --quiet --no-deps 'tinysoundfont>=0.3'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/jtm demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

# Kill at any moment: >= 10 seeded SIGKILLs of each of data synth, data prepare, pretrain, downstream, study and
# demo, each followed by a re-run compared with an uninterrupted run (slow; JTM_FAULT_KILLS=N for fewer kills).
faults: $(STAMP)
	$(PY) -m pytest -q -s -p no:cacheprovider tests/fault_injection.py $(ARGS)

bench: $(STAMP)
	bash benchmarks/run_all.sh

clean:
	rm -rf $(VENV) build *.egg-info
