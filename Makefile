# Two commands set everything up on a fresh machine:  `make demo` (the main job) and `make test` (the tests).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# CPU build of torch that lies on the developer/CI machines' disk; the container takes torch from its base image.
TORCH   ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint package-smoke ci clean constraints image

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e '.[runtime,dev]'
	touch $@

# The CPU demo: import the real Gemma 3 270M, LoRA-finetune it on the bundled dataset, export, generate.
demo: setup
	$(BIN)/gemma3-launch submit jobspecs/demo_270m_lora.yaml --cluster local --follow

# Every CI-able test tier (unit, real_model, slurm, k8s); gpu tests run only on a GPU machine.
test: setup
	$(BIN)/python -m pytest -m "not gpu" $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "unit" $(PYTEST_ARGS)

# ruff format check + lint (rules and line length in pyproject.toml); zero findings is the bar.
lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

# Build the wheel and smoke-test the CLIs from a NON-editable install outside the source tree.
package-smoke: setup
	bash scripts/package_smoke.sh

ci: lint test package-smoke

constraints: setup
	$(BIN)/pip freeze --exclude-editable | grep -v '^torch==' > /tmp/constraints.new && echo "review /tmp/constraints.new"

clean:
	rm -rf $(VENV) build dist *.egg-info

# ---- the job image: containers/image.env is the one definition of the base image and the default job image ----
# `make image` builds it as IMAGE; `make image REGISTRY=registry.example.com/team` builds
# REGISTRY/gemma3-launch:<IMAGE's tag> and pushes it. Docker or Podman, whichever is installed (or ENGINE=...).
IMAGE_ENV     := containers/image.env
BASE_IMAGE    := $(shell sed -n 's/^BASE_IMAGE=//p' $(IMAGE_ENV))
DEFAULT_IMAGE := $(shell sed -n 's/^IMAGE=//p' $(IMAGE_ENV))
REGISTRY      ?=
ENGINE        ?= $(shell command -v docker >/dev/null 2>&1 && echo docker || { command -v podman >/dev/null 2>&1 && echo podman; } || echo docker)
IMAGE_NAME    := $(if $(REGISTRY),$(REGISTRY)/gemma3-launch:$(lastword $(subst :, ,$(DEFAULT_IMAGE))),$(DEFAULT_IMAGE))
# OCI labels: where the image was built from, at which commit and version, and when.
IMAGE_SOURCE  := $(shell git remote get-url origin 2>/dev/null || echo https://github.com/gemma3-launch/gemma3-launch)
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_REV     := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
IMAGE_CREATED := $(shell date -u +%Y-%m-%dT%H:%M:%SZ)

image:
	$(PY) containers/sync_image.py --check
	$(ENGINE) build -f containers/Dockerfile -t $(IMAGE_NAME) --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg IMAGE=$(IMAGE_NAME) --build-arg SOURCE=$(IMAGE_SOURCE) --build-arg VERSION=$(IMAGE_VERSION) --build-arg REVISION=$(IMAGE_REV) --build-arg CREATED=$(IMAGE_CREATED) .
	$(if $(REGISTRY),$(ENGINE) push $(IMAGE_NAME),@echo "built $(IMAGE_NAME) (not pushed: set REGISTRY=... to push)")
