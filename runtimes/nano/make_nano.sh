#!/usr/bin/env bash
# Makes gpt-oss-nano from scratch: corpus -> project renderer -> training -> ONNX export ->
# runtimes/nano/gpt-oss-nano.tar.xz (embedded in gpt-oss-server) and heldout.jsonl (its
# evaluation set). Work files go to runtimes/nano/out/ (gitignored).
#
#   runtimes/nano/make_nano.sh              # CPU: 30 minutes of training (one stage; see training.json for the shipped two-stage run)
#   MINUTES=10 runtimes/nano/make_nano.sh
#   DEVICE=cuda runtimes/nano/make_nano.sh  # on a GPU host
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=runtimes/nano/out
MINUTES=${MINUTES:-30}
DEVICE=${DEVICE:-cpu}
PY=.venv-tools/bin/python
mkdir -p "$OUT"

[ -x "$PY" ] || runtimes/fixture/make_venv.sh

echo "== corpus (templates, held-out combinations excluded from training)"
"$PY" runtimes/nano/gen_corpus.py "$OUT/data" --train 40000 --heldout 300 --seed 1234

echo "== render through the project's harmony renderer"
cargo build -p harmony --example render_jsonl
target/debug/examples/render_jsonl <"$OUT/data/train.jsonl" >"$OUT/data/train.tok.jsonl"
target/debug/examples/render_jsonl <"$OUT/data/heldout.jsonl" >"$OUT/data/heldout.tok.jsonl"

echo "== train ($MINUTES min on $DEVICE)"
"$PY" runtimes/nano/train.py "$OUT/data/train.tok.jsonl" "$OUT/hf" --minutes "$MINUTES" --device "$DEVICE" --lr 4e-3

echo "== export with onnxruntime-genai's builder, pack"
"$PY" runtimes/nano/export.py "$OUT/hf" "$OUT/onnx" --archive runtimes/nano/gpt-oss-nano.tar.xz
cp "$OUT/data/heldout.jsonl" runtimes/nano/heldout.jsonl
cp "$OUT/hf/nano_training.json" "$OUT/training.json"
echo "done: runtimes/nano/gpt-oss-nano.tar.xz ($(stat -c %s runtimes/nano/gpt-oss-nano.tar.xz) bytes)"
echo "evaluate: cargo build --release -p gpt-oss-server && .venv/bin/python -m pytest -q tests/python/test_nano_eval.py"
