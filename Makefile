# Two commands on a fresh clone: `make quickstart` (install + the main job) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A CPU torch wheel: a plain `pip install torch` would pull a multi-GB CUDA build.
TORCH := torch==2.13.0
WHEELS := $(wildcard /opt/wheels)
PIP := $(BIN)/pip install --disable-pip-version-check -c constraints.txt $(if $(WHEELS),--find-links $(WHEELS))

# Headless machines render offscreen through EGL (Mesa works without a GPU).
ifeq ($(strip $(DISPLAY)),)
export MUJOCO_GL ?= egl
endif

.PHONY: install system-deps quickstart preview test lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH)
	$(PIP) -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# EGL + Mesa for headless rendering; installed with apt only when missing.
system-deps:
	@if ! ldconfig -p | grep -q 'libEGL.so.1' || ! ldconfig -p | grep -q 'libGL.so.1'; then \
		echo "installing EGL/Mesa for headless rendering"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri; \
	fi
	@if ! command -v Xvfb >/dev/null || ! command -v xdotool >/dev/null; then \
		echo "installing Xvfb and xdotool for the teleoperation GUI test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xdotool) \
			|| echo "could not install xvfb and xdotool; tests/test_teleop.py will skip its GUI test"; \
	fi

# The main job on the embedded default: scripted demos of lift -> a pixel policy -> evaluation with videos.
# Its folders are its own: a rerun starts them afresh.
QUICK_DEMOS := demos/quickstart-lift
QUICK_POLICY := policies/quickstart-lift-bc
QUICK_STEPS ?= 2500
quickstart: install
	$(BIN)/robolearn envs
	rm -rf $(QUICK_DEMOS) $(QUICK_POLICY)
	$(BIN)/robolearn record --task lift --device scripted --episodes 50 --image-size 64 --out $(QUICK_DEMOS)
	$(BIN)/robolearn train $(QUICK_DEMOS) --out $(QUICK_POLICY) --steps $(QUICK_STEPS) --eval-every 1000 --eval-episodes 20
	$(BIN)/robolearn eval $(QUICK_POLICY) --episodes 50 --workers 2 --weights best --video --video-episodes 16 --label quickstart
	@echo "videos: $(QUICK_POLICY)/eval/quickstart/grid.mp4 and $(QUICK_POLICY)/eval/quickstart/videos/"

preview: install
	$(BIN)/robolearn preview --out videos/scripted.mp4

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check robolearn tests benchmarks envs
	$(BIN)/ruff format --check robolearn tests benchmarks envs

bench: install
	$(BIN)/python benchmarks/sim_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
