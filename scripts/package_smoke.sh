#!/usr/bin/env bash
# Build the wheel and smoke-test the CLIs from a NON-editable install in a fresh venv, run from outside the source
# tree, so a packaging mistake (a module or data file missing from the wheel) cannot hide behind the checkout.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$repo/.venv/bin/python" -m build --wheel --outdir "$work/dist" "$repo" >/dev/null
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --upgrade pip
"$work/venv/bin/pip" install -q "${TORCH:-torch==2.13.0}"
wheel="$(ls "$work"/dist/gemma3_launch-*.whl)"
"$work/venv/bin/pip" install -q -c "$repo/constraints.txt" "${wheel}[runtime]"
cd "$work"   # never import from the checkout
bin="$work/venv/bin"
"$bin/python" - <<'PY'
import gemma3_launch, gemma3_runtime, os
for mod in (gemma3_launch, gemma3_runtime):
    assert "site-packages" in mod.__file__, f"{mod.__name__} imported from {mod.__file__}, not the installed wheel"
print("installed from the wheel:", os.path.dirname(gemma3_launch.__file__), os.path.dirname(gemma3_runtime.__file__))
PY
"$bin/gemma3-launch" --help >/dev/null
"$bin/gemma3-runtime" --help >/dev/null
"$bin/gemma3-runtime" convert import --help >/dev/null
"$bin/python" -c "from gemma3_runtime import AutoBridge; from gemma3_runtime.model.config import Gemma3Config; print(Gemma3Config.preset('1b'))" >/dev/null
for spec in "$repo"/jobspecs/*.yaml; do "$bin/gemma3-launch" validate "$spec" >/dev/null; done
"$bin/python" -c "import importlib.resources as r; assert any(p.name.endswith('.jsonl') for p in r.files('gemma3_runtime.data').joinpath('bundled').iterdir()), 'bundled dataset missing from the wheel'"
echo "package smoke: OK ($(basename "$wheel"))"
