#!/bin/bash
# The SLURM testbed's image stand-in: a SECOND Python environment that jobs name as `container.image` and the fake
# pyxis "imports" (its bin/ first on the task's PATH). It holds a non-editable install of this checkout (so the job
# runs the installed wheel, not the source tree) and sees the build environment's site-packages (torch, megatron-core,
# submitit, wandb...) through a .pth line, standing in for what the real image carries. `torchrun` is the image's own.
# Usage: make_image.sh DEST [PYTHON]   (PYTHON: an interpreter with the runtime's dependencies; default python3)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DEST=${1:?usage: make_image.sh DEST [PYTHON]}
PY=${2:-python3}
deps=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
base=$("$PY" -c 'import sys; print(sys.base_prefix)')
rm -rf "$DEST"
"$base/bin/python3" -m venv "$DEST"
site=$("$DEST/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$deps" > "$site/zz_image_dependencies.pth"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cp -r "$REPO/pyproject.toml" "$REPO/launcher" "$REPO/runtime" "$build/"
[ -f "$REPO/README.md" ] && cp "$REPO/README.md" "$build/"
"$PY" -m pip wheel -q --no-deps --no-build-isolation --no-index -w "$build/dist" "$build" >/dev/null
"$DEST/bin/python3" -m pip install -q --no-deps --no-index "$build"/dist/*.whl >/dev/null
printf '#!/bin/sh\nexec "$(dirname "$0")/python3" -m torch.distributed.run "$@"\n' > "$DEST/bin/torchrun"
chmod +x "$DEST/bin/torchrun"
"$DEST/bin/python3" -c 'import gemma3_launch, gemma3_runtime, submitit, torch, wandb; print("image ready:", gemma3_launch.__file__)'
