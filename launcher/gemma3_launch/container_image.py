"""Container image references. GENERATED from containers/image.env by containers/sync_image.py: edit that
file and re-run the script; never edit this one (a unit test checks they agree)."""

#: The image jobs run in unless the spec names another (what `make image` builds and tags).
DEFAULT_IMAGE = "ghcr.io/gemma3-launch/gemma3-launch:0.1.0-ngc26.06"

#: NVIDIA's PyTorch base image the job image is built FROM (pinned by digest).
BASE_IMAGE = "nvcr.io/nvidia/pytorch:26.06-py3@sha256:43c018d6a12963f1a1bad85ef8574b5c2a978eec2be0ebcacfb87f69e0d210e1"
