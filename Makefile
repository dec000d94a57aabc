# The two quick-start commands: `make demo` and `make test`. Each installs what it needs first.
PYTHON ?= python3
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: demo test deps browser

deps:
	$(PYTHON) -m pip install $(PIP_FLAGS) -e '.[test]'

# Debian's Chromium plays H.264/AAC/Opus/VP9/AV1 through MSE; Playwright drives it (no browser download).
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "browser tests need Debian's chromium: sudo apt-get install chromium"; fi; }

demo: deps
	$(PYTHON) -m relay demo

test: deps browser
	$(PYTHON) -m pytest
