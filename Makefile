PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench bench-gpu clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Reinstall whenever the package metadata changes, so a stale .venv cannot hide a missing dependency.
$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PIP) install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m deploykit.demo

test: $(STAMP)
	$(PY) -m pytest -q

# The quick loop while working: everything but the modules that run real trained models end to end, a real Triton
# server or a 2 GB model (make test, which CI runs, includes them).
test-fast: $(STAMP)
	$(PY) -m pytest -q --ignore=tests/test_ppocr.py --ignore=tests/test_yolo.py --ignore=tests/serving \
		--ignore=tests/test_large_models.py --ignore=tests/test_real_models.py

bench: $(STAMP)
	$(PY) bench/run.py

# On a machine with a CUDA GPU: the gpu extra (tensorrt, NVML), and onnxruntime-gpu in place of onnxruntime.
bench-gpu: $(STAMP)
	$(PIP) install --quiet -e '.[gpu]'
	$(PIP) uninstall --yes --quiet onnxruntime
	$(PIP) install --quiet 'onnxruntime-gpu>=1.20,<2'
	$(PY) bench/run.py --gpu

clean:
	rm -rf $(VENV) out build *.egg-info
