#!/usr/bin/env bash
# Run ON THE GPU MACHINE, in the repository root, after all wheel parts are in /tmp/parts
# and target/release (built here, x86-64) was carried. Builds the 20b-shaped model,
# runs onnxruntime-genai's generator and our runtime on it, and prints the table.
set -euo pipefail
mkdir -p /tmp/wheels /tmp/site
cat /tmp/parts/wheels.tar.zst.part-* | zstd -dq | tar -C /tmp/wheels -xf -
python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/wheels/*.whl
export PYTHONPATH=/tmp/site
export ORT_DYLIB_PATH=$(ls /tmp/site/onnxruntime/capi/libonnxruntime.so.* | head -1)
model=/tmp/gptoss20b-4l
[ -f /tmp/fx/tiny/tokenizer.json ] || runtimes/fixture/unpack.sh /tmp/fx
[ -f "$model/genai_config.json" ] || python3 benches/cuda/make_model.py --out "$model" --layers 4 \
  --tokenizer /tmp/fx/tiny/tokenizer.json
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 benches/cuda/bench_genai.py "$model" --batch 8 | tee ${OUT:-/tmp}/genai.json
# Our runtime on the same folder (runtimes/examples/bench_onnx, built here with
#   cargo build --release -p gpt-oss-runtimes --example bench_onnx, and carried).
target/release/examples/bench_onnx --model "$model" --device-map cuda:0 --concurrency 1,8 \
  --prompt-len 2000 --new-tokens 128 | tee ${OUT:-/tmp}/ours.json
python3 benches/cuda/bandwidth_bound.py --layers 4 --hbm-gbs 3350
