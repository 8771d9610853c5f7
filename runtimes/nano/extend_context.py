#!/usr/bin/env python3
"""Raise the context length of an onnxruntime-genai gpt-oss export (gpt-oss-nano) by computing
its rotary tables in the graph instead of storing them.

    extend_context.py MODEL_DIR [--context 32768] [--archive runtimes/nano/gpt-oss-nano.tar.xz]

The builder stores `cos_cache` / `sin_cache` ([context, head_size / 2] float32, YaRN-scaled
frequencies times YaRN's attention factor) for `context_length` positions, and
GroupQueryAttention cannot rotate a position past the table's end. gpt-oss uses YaRN RoPE
(factor 32 over 4,096 original positions: 131,072 positions by design), so the same
frequencies serve a longer context; the sliding-window layers only look 128 positions back.

This script reads the frequencies and the attention factor back from the stored tables (row 0
is the factor, the angle of each later row is position x frequency; the last row pins each
frequency to the builder's float32 value), replaces both tables by a small subgraph
(Range -> Mul -> Cos / Sin -> Mul, in float32 as the builder computes them) that ONNX Runtime folds into constants when the
session starts, for `--context` positions, checks that the first rows equal the old tables, and
sets `context_length` and `search.max_length` in genai_config.json. The archive stays as small as
before (the tables are not stored). With `--archive` the folder is packed again (export.pack).

Needs `onnx` and `numpy` (runtimes/fixture/make_venv.sh installs both).
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))


def frequencies(cos, sin):
    """YaRN's attention factor and the rotary frequencies of a builder's tables, in float64."""
    factor = float(cos[0, 0])
    assert np.allclose(cos[0], factor) and np.allclose(sin[0], 0.0), "row 0 must be (factor, 0)"
    coarse = np.arctan2(sin[1], cos[1]).astype(np.float64)
    last = cos.shape[0] - 1
    angle = np.arctan2(sin[last], cos[last]).astype(np.float64)
    # position x frequency = angle + 2 pi k: the coarse estimate picks k.
    k = np.round((last * coarse - angle) / (2 * math.pi))
    return factor, (angle + 2 * math.pi * k) / last


def extend(model_dir, context):
    path = os.path.join(model_dir, "model.onnx")
    model = onnx.load(path)
    inits = {i.name: i for i in model.graph.initializer}
    if "cos_cache" not in inits or "sin_cache" not in inits:
        sys.exit(f"{path}: no cos_cache / sin_cache initializers (already extended?)")
    cos = numpy_helper.to_array(inits["cos_cache"])
    sin = numpy_helper.to_array(inits["sin_cache"])
    factor, freq = frequencies(cos, sin)
    # The builder computes the tables in float32 (position x frequency rounded to float32, then
    # cos / sin, then the factor): so does the subgraph, and the first rows come out the same.
    freq = freq.astype(np.float32)
    factor = np.float32(factor)
    positions = np.arange(cos.shape[0], dtype=np.float32)[:, None]
    angles = positions * freq[None, :]
    err = max(np.abs(np.cos(angles) * factor - cos).max(), np.abs(np.sin(angles) * factor - sin).max())
    assert err < 2e-6, f"the recovered frequencies do not reproduce the stored tables (error {err})"
    print(f"attention factor {factor:.7f}, {freq.size} frequencies, table error {err:.2e}, "
          f"{cos.shape[0]} -> {context} positions")

    for name in ("cos_cache", "sin_cache"):
        model.graph.initializer.remove(inits[name])
        # A shape the builder recorded for the old tables would contradict the new ones.
        for vi in [v for v in model.graph.value_info if v.name == name]:
            model.graph.value_info.remove(vi)
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "rotary/start"),
        numpy_helper.from_array(np.array(float(context), dtype=np.float32), "rotary/limit"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "rotary/delta"),
        numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), "rotary/column"),
        numpy_helper.from_array(freq.reshape(1, -1), "rotary/frequencies"),
        numpy_helper.from_array(np.array(factor, dtype=np.float32), "rotary/attention_factor"),
    ])
    nodes = [
        helper.make_node("Range", ["rotary/start", "rotary/limit", "rotary/delta"], ["rotary/positions"],
                         name="rotary/Range"),
        helper.make_node("Reshape", ["rotary/positions", "rotary/column"], ["rotary/positions_column"],
                         name="rotary/Reshape"),
        helper.make_node("Mul", ["rotary/positions_column", "rotary/frequencies"], ["rotary/angles"],
                         name="rotary/Angles"),
    ]
    for op, out in (("Cos", "cos_cache"), ("Sin", "sin_cache")):
        nodes += [
            helper.make_node(op, ["rotary/angles"], [f"rotary/{op}"], name=f"rotary/{op}"),
            helper.make_node("Mul", [f"rotary/{op}", "rotary/attention_factor"], [out],
                             name=f"rotary/{op}Scaled"),
        ]
    # The tables feed every attention layer: compute them first.
    for i, n in enumerate(nodes):
        model.graph.node.insert(i, n)
    data = "model.onnx.data"
    os.remove(os.path.join(model_dir, data))
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data,
              size_threshold=1024)
    os.chmod(os.path.join(model_dir, data), 0o644)

    cfg_path = os.path.join(model_dir, "genai_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["model"]["context_length"] = context
    cfg.setdefault("search", {})["max_length"] = context
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=4)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--archive", help="pack the folder into this tar.xz (export.py's format)")
    args = ap.parse_args()
    extend(args.model_dir, args.context)
    if args.archive:
        sys.path.insert(0, HERE)
        import export  # noqa: E402  (export.pack: the deterministic archive)

        names, size = export.pack(args.model_dir, args.archive)
        print(f"packed {names} into {args.archive}: {size} bytes")
        if size > export.MAX_ARCHIVE_BYTES:
            sys.exit(f"archive is {size} bytes, over the {export.MAX_ARCHIVE_BYTES} limit")


if __name__ == "__main__":
    main()
