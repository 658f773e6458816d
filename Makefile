# napari-emssl: `make run` opens napari with the plugin, `make test` runs the whole suite.
# Both go through `make install`, which creates .venv and installs the package with its
# dev extras. On a fresh Debian/Ubuntu machine `make test` also installs the few system
# packages the GUI tests need (a virtual X server and Qt's xcb libraries) when it can.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
GUI_DEBS := xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-randr0 libxcb-render-util0 \
	libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxcb-cursor0 libxkbcommon-x11-0 libegl1 libgl1 \
	libgl1-mesa-dri libfontconfig1 libdbus-1-3 libglib2.0-0
PYTEST_ARGS ?=

.PHONY: install run test test-core demo benchmark screenshot sample-data gui-deps clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian packages for Qt under a virtual X server; installed only when missing and possible.
gui-deps:
	@missing=""; for p in $(GUI_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then echo "missing system packages:$$missing (install them by hand)"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo -n"; else \
		echo "missing system packages:$$missing; run as root: apt-get install$$missing"; exit 0; fi; \
	echo "installing system packages:$$missing"; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null

test: install gui-deps
	QT_QPA_PLATFORM=xcb $(PY) -m pytest $(PYTEST_ARGS)

test-core: install
	$(PY) -m pytest -p no:napari tests/core tests/cli $(PYTEST_ARGS)

run: install
	@if [ -z "$$DISPLAY" ] && [ -z "$$WAYLAND_DISPLAY" ] && [ "$$(uname)" != Darwin ]; then \
		echo "No display found, so napari cannot open a window here."; \
		echo "Run the same workflow headless instead:  $(VENV)/bin/emssl demo"; \
		exit 0; fi; \
	$(PY) scripts/run_napari.py

demo: install
	$(VENV)/bin/emssl demo

benchmark: install
	$(PY) benchmarks/segmentation_strokes.py

screenshot: install gui-deps
	QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) scripts/screenshot.py

sample-data: install
	$(PY) scripts/make_sample_data.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
