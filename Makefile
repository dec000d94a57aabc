# The two quick-start commands: `make demo` and `make test`. Each installs what it needs first.
PYTHON ?= python3
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: demo test deps browser

deps: node_modules/.package-lock.json
	$(PYTHON) -m pip install $(PIP_FLAGS) -e '.[test]'

# hls.js for the recording player, from the npm registry as package-lock.json pins it (served at /vendor/);
# installed again only when the lock file changes.
node_modules/.package-lock.json: package.json package-lock.json
	@if command -v npm >/dev/null; then npm ci --no-audit --no-fund --loglevel=error; else \
	  echo "npm not found: recordings will not play in the browser until hls.js is installed (apt-get install npm, then make deps)"; fi

# Debian's Chromium plays H.264/AAC/Opus/VP9/AV1 through MSE; Playwright drives it (no browser download).
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "browser tests need Debian's chromium: sudo apt-get install chromium"; fi; }

demo: deps
	$(PYTHON) -m relay demo

test: deps browser
	$(PYTHON) -m pytest
