#!/bin/bash
# Build (and optionally push) the job image from the ONE image definition, containers/image.env.
# Usage: containers/build.sh [--push]      (run from anywhere; the build context is the repo root)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
value() { sed -n "s/^$1=//p" "$REPO/containers/image.env"; }
BASE_IMAGE=$(value BASE_IMAGE); IMAGE=$(value IMAGE)
[ -n "$BASE_IMAGE" ] && [ -n "$IMAGE" ] || { echo "build.sh: BASE_IMAGE/IMAGE missing in containers/image.env" >&2; exit 2; }
# Base image pinned by tag only: still builds, but the result is not reproducible; say so.
case "$BASE_IMAGE" in *@sha256:*) ;; *) echo "build.sh: warning: BASE_IMAGE is not pinned by digest; run containers/resolve_digest.sh BASE_IMAGE" >&2 ;; esac
"$REPO/.venv/bin/python" "$REPO/containers/sync_image.py" --check 2>/dev/null || python3 "$REPO/containers/sync_image.py" --check
DOCKER_BUILDKIT=1 docker build -f "$REPO/containers/Dockerfile" \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "IMAGE=$IMAGE" -t "$IMAGE" "$REPO"
if [ "${1:-}" = "--push" ]; then
  docker push "$IMAGE"
  "$REPO/containers/resolve_digest.sh" IMAGE
fi
