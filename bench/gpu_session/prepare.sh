#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before a device call: the GPU image has no megatron-core and no pydantic, and no
# network, so their cp312 wheels travel in .whl/, and the real Gemma 3 tokenizer (from the cached 270M) in .gpu_assets/.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  megatron-core==0.16.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  nvidia-cudnn-frontend==1.32.0 apache-tvm-ffi==0.1.15.post2 cuda-bindings==13.5.0 cuda-pathfinder==1.9.1 \
  torchao==0.18.0
# (the cuDNN frontend brings cuDNN's sliding-window SDPA kernels, perf/attention.py; its CuTe-DSL extras, ~190 MB,
# are left out: the cuDNN backend engines need only the libcudnn that torch already loads; torchao's abi3 wheel
# brings perf.fp8's float8 matmuls, built against torch 2.11, the GPU image's torch)
mkdir -p .gpu_assets/tokenizer
src=$(.venv/bin/python -c "from gemma3_runtime.assets import gemma3_270m_hf_dir; print(gemma3_270m_hf_dir())")
cp "$src"/tokenizer*.json .gpu_assets/tokenizer/
echo "ready: carry [\".whl\", \".gpu_assets\"] and run: PARTS='gputests gen lora1b dp2' bash bench/gpu_session/run.sh"
