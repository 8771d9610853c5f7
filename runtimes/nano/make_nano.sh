#!/usr/bin/env bash
# Makes gpt-oss-nano from scratch: corpus -> project renderer -> training -> ONNX export ->
# runtimes/nano/gpt-oss-nano.tar.xz (embedded in gpt-oss-server) and heldout.jsonl (its
# evaluation set). Work files go to runtimes/nano/out/ (gitignored).
#
#   runtimes/nano/make_nano.sh              # CPU (THREADS=2 torch threads): about 35 minutes of training
#                                           # in three stages counted in steps: 3,500 at lr 4e-3 on the
#                                           # short corpus with six fixed dates (copying numbers from the
#                                           # prompt is learnt there: with any date, the date's digits beside
#                                           # them left the loss 5x higher after as many steps, 0.054 against
#                                           # 0.0098, and a held-out model that copied numbers wrong); then 450 at
#                                           # 1e-3 from it on any date, short and long-context batches in turn;
#                                           # then 430 more the same way at 5e-4. Steps, not minutes: a much
#                                           # longer stage 1 over-fits (n>1 samples that never differ)
#   DEVICE=cuda runtimes/nano/make_nano.sh  # on a GPU host
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=runtimes/nano/out
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-2}
PY=.venv-tools/bin/python
mkdir -p "$OUT"

"$PY" -c "import onnxruntime_genai, onnx_ir" 2>/dev/null || runtimes/fixture/make_venv.sh

echo "== corpus (templates, held-out combinations excluded from training)"
"$PY" runtimes/nano/gen_corpus.py "$OUT/data" --train 40000 --heldout 300 --seed 1234 \
    --long-groups 300 --long-heldout 10
echo "== stage 1's corpus: the same items, six fixed dates (copying numbers is learnt there first)"
"$PY" runtimes/nano/gen_corpus.py "$OUT/data-fixed" --train 40000 --heldout 300 --seed 1234 --fixed-dates

echo "== render through the project's harmony renderer"
cargo build -p harmony --example render_jsonl
target/debug/examples/render_jsonl <"$OUT/data/train.jsonl" >"$OUT/data/train.tok.jsonl"
target/debug/examples/render_jsonl <"$OUT/data/heldout.jsonl" >"$OUT/data/heldout.tok.jsonl"
target/debug/examples/render_jsonl <"$OUT/data/train_long.jsonl" >"$OUT/data/train_long.tok.jsonl"
target/debug/examples/render_jsonl <"$OUT/data-fixed/train.jsonl" >"$OUT/data-fixed/train.tok.jsonl"

echo "== train, stage 1 (3500 steps on $DEVICE, lr 4e-3, six fixed dates)"
"$PY" runtimes/nano/train.py "$OUT/data-fixed/train.tok.jsonl" "$OUT/hf-stage1" --steps 3500 --device "$DEVICE" --lr 4e-3 --threads "$THREADS"
echo "== train, stage 2 (450 steps on $DEVICE, lr 1e-3, from stage 1, with long contexts)"
"$PY" runtimes/nano/train.py "$OUT/data/train.tok.jsonl" "$OUT/hf-stage2" --steps 450 --device "$DEVICE" --lr 1e-3 --init "$OUT/hf-stage1" --threads "$THREADS" \
    --long "$OUT/data/train_long.tok.jsonl"
echo "== train, stage 3 (430 steps on $DEVICE, lr 5e-4, from stage 2, with long contexts)"
"$PY" runtimes/nano/train.py "$OUT/data/train.tok.jsonl" "$OUT/hf" --steps 430 --device "$DEVICE" --lr 5e-4 --init "$OUT/hf-stage2" --threads "$THREADS" \
    --long "$OUT/data/train_long.tok.jsonl"

echo "== export with onnxruntime-genai's builder, pack"
"$PY" runtimes/nano/export.py "$OUT/hf" "$OUT/onnx" --archive runtimes/nano/gpt-oss-nano.tar.xz
echo "== context 4,096 -> 32,768 (rotary tables computed in the graph), pack again"
"$PY" runtimes/nano/extend_context.py "$OUT/onnx" --context 32768 --archive runtimes/nano/gpt-oss-nano.tar.xz
cp "$OUT/data/heldout.jsonl" runtimes/nano/heldout.jsonl
cp "$OUT/data/heldout_long.jsonl" runtimes/nano/heldout_long.jsonl
cp "$OUT/hf/nano_training.json" "$OUT/training.json"
echo "done: runtimes/nano/gpt-oss-nano.tar.xz ($(stat -c %s runtimes/nano/gpt-oss-nano.tar.xz) bytes)"
echo "evaluate: cargo build --release -p gpt-oss-server && .venv/bin/python -m pytest -q tests/python/test_nano_eval.py"
