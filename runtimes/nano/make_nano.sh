#!/usr/bin/env bash
# Makes gpt-oss-nano from scratch: corpus -> project renderer -> training -> ONNX export ->
# runtimes/nano/gpt-oss-nano.tar.xz (embedded in gpt-oss-server) and heldout.jsonl (its
# evaluation set). Work files go to runtimes/nano/out/ (gitignored).
#
#   runtimes/nano/make_nano.sh              # CPU: 30 minutes of training, in the shipped model's two
#                                           # stages (25 min at lr 4e-3, then 5 min at 1e-3 from it)
#   MINUTES=10 runtimes/nano/make_nano.sh   # the same split, scaled (5/6 and 1/6 of MINUTES)
#   DEVICE=cuda runtimes/nano/make_nano.sh  # on a GPU host
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=runtimes/nano/out
MINUTES=${MINUTES:-30}
DEVICE=${DEVICE:-cpu}
PY=.venv-tools/bin/python
mkdir -p "$OUT"

"$PY" -c "import onnxruntime_genai, onnx_ir" 2>/dev/null || runtimes/fixture/make_venv.sh

echo "== corpus (templates, held-out combinations excluded from training)"
"$PY" runtimes/nano/gen_corpus.py "$OUT/data" --train 40000 --heldout 300 --seed 1234

echo "== render through the project's harmony renderer"
cargo build -p harmony --example render_jsonl
target/debug/examples/render_jsonl <"$OUT/data/train.jsonl" >"$OUT/data/train.tok.jsonl"
target/debug/examples/render_jsonl <"$OUT/data/heldout.jsonl" >"$OUT/data/heldout.tok.jsonl"

STAGE1=$(python3 -c "print(round($MINUTES * 5 / 6, 2))")
STAGE2=$(python3 -c "print(round($MINUTES / 6, 2))")
echo "== train, stage 1 ($STAGE1 min on $DEVICE, lr 4e-3)"
"$PY" runtimes/nano/train.py "$OUT/data/train.tok.jsonl" "$OUT/hf-stage1" --minutes "$STAGE1" --device "$DEVICE" --lr 4e-3
echo "== train, stage 2 ($STAGE2 min on $DEVICE, lr 1e-3, from stage 1)"
"$PY" runtimes/nano/train.py "$OUT/data/train.tok.jsonl" "$OUT/hf" --minutes "$STAGE2" --device "$DEVICE" --lr 1e-3 --init "$OUT/hf-stage1"

echo "== export with onnxruntime-genai's builder, pack"
"$PY" runtimes/nano/export.py "$OUT/hf" "$OUT/onnx" --archive runtimes/nano/gpt-oss-nano.tar.xz
echo "== context 4,096 -> 32,768 (rotary tables computed in the graph), pack again"
"$PY" runtimes/nano/extend_context.py "$OUT/onnx" --context 32768 --archive runtimes/nano/gpt-oss-nano.tar.xz
cp "$OUT/data/heldout.jsonl" runtimes/nano/heldout.jsonl
cp "$OUT/hf/nano_training.json" "$OUT/training.json"
echo "done: runtimes/nano/gpt-oss-nano.tar.xz ($(stat -c %s runtimes/nano/gpt-oss-nano.tar.xz) bytes)"
echo "evaluate: cargo build --release -p gpt-oss-server && .venv/bin/python -m pytest -q tests/python/test_nano_eval.py"
