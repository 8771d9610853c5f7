#!/usr/bin/env bash
# Run HERE (a machine with PyPI access): fetches the CUDA wheels the GPU machine lacks
# and splits them into compressed parts of < 60 MiB, because each device call carries
# at most 64 MiB. Parts go to .whl/cuda/ (ignored by git); send them over successive
# calls while the machine stays warm, each call naming `.whl` in `carry` and running
#   mkdir -p /tmp/parts && cp .whl/cuda/* /tmp/parts/
# then, after the last part: benches/cuda/device_run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=.whl/cuda
mkdir -p "$dest" .whl/dl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  -d .whl/dl onnxruntime-gpu==1.31.1 onnxruntime-genai-cuda==0.18.0
tar -C .whl/dl -cf - . | zstd -q -19 -T0 | split -b 60M - "$dest/wheels.tar.zst.part-"
ls -la "$dest"
