# The two commands of the README. Both set everything up first (idempotent, from the registries).
PY ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip
EXTRAS := app,onnx,lite,scale,test

.PHONY: setup app test test-fast browser
$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed

# Debian's Chromium for the one real-browser test (skipped with a reason when it cannot be installed).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1) || \
	  echo "could not install Debian chromium; the browser test will be skipped")

app: setup
	$(VENV)/bin/marrowscope app

# The import contracts (pyproject.toml), the docs site and every test.
test: setup browser
	$(VENV)/bin/lint-imports
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q
	$(VENV)/bin/python -m pytest -q

# The tests without the slow end-to-end ones (training runs, DDP, browser): about 80 s on 2 cores.
test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"
