# Two commands set everything up on a fresh machine:  `make demo` (the main job) and `make test` (the tests).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# CPU build of torch that lies on the developer/CI machines' disk; the container takes torch from its base image.
TORCH   ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint package-smoke ci clean constraints

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
