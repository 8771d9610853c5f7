#!/usr/bin/env python3
"""Builds the gpt-oss-20b-shaped benchmark model on the GPU machine (issue 9).

The checkpoint is benches/realshape/make_models.py's (the 20b shape with random weights, its
experts also in the MXFP4 layout the builder's int4 path needs), with fewer layers than the real
24 (default 4), exported with onnxruntime-genai's builder, int4 for CUDA:
    python -m onnxruntime_genai.models.builder -i HF_DIR -o OUT -p int4 -e cuda

Usage: make_model.py --out /tmp/gptoss20b-4l [--layers 4] [--tokenizer tokenizer.json]
"""
import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "realshape"))
from make_models import export, make_checkpoint  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="output folder of the ONNX export")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokenizer", help="o200k_harmony tokenizer.json (default: gpt-oss-nano's)")
    ap.add_argument("--precision", default="int4")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    if args.precision != "int4":
        ap.error("only int4 (the builder's QMoE path from MXFP4 experts) is made here")
    hf_dir = args.out.rstrip("/") + "-hf"
    make_checkpoint(hf_dir, args.layers)
    if args.tokenizer:
        shutil.copy(args.tokenizer, os.path.join(hf_dir, "tokenizer.json"))
    export(hf_dir, args.out, args.device, args.out.rstrip("/") + "-cache")
    return 0


if __name__ == "__main__":
    sys.exit(main())
