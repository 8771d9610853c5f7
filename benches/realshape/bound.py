#!/usr/bin/env python3
"""The memory-bandwidth bound of one decode step of an onnxruntime-genai gpt-oss export (issue 18).

One decode step of one sequence must read, at least once:
  - every weight of the graph that every token uses: attention (MatMulNBits qkv/o projections and
    their scales), router, norms, biases, sinks, and the whole lm_head (every logit is computed);
  - of each QMoE layer's experts, the k routed ones: k / E of its packed weights, scales and biases;
  - of the embedding and the RoPE caches, one row;
  - the KV cache: keys and values of min(T, window) positions on sliding layers, T on full ones.
The sizes are read from the model's own initializers (the external data is not loaded), so the
figure is that of the file being benchmarked. Divided by the machine's memory bandwidth (the
STREAM triad of benches/realshape/triad.rs), it is the fastest a decode step can be.

Usage: bound.py --model DIR --ctx T --gb-s BANDWIDTH [--measured-tok-s X]
Prints one JSON line: bytes_per_token (and its parts), bound_tok_s, fraction_of_bound.
"""
import argparse
import json
import os

import onnx

ELEM_BYTES = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
              onnx.TensorProto.UINT8: 1, onnx.TensorProto.INT8: 1, onnx.TensorProto.INT64: 8,
              onnx.TensorProto.INT32: 4}


def nbytes(t):
    n = 1
    for d in t.dims:
        n *= d
    return n * ELEM_BYTES[t.data_type]


def decode_bytes(model_dir, ctx):
    with open(os.path.join(model_dir, "genai_config.json")) as f:
        dec = json.load(f)["model"]["decoder"]
    m = onnx.load(os.path.join(model_dir, dec["filename"]), load_external_data=False)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    parts = {"dense": 0, "experts_active": 0, "experts_total": 0, "lm_head": 0, "rows": 0, "kv": 0}
    seen = set()
    for n in g.node:
        names = [x for x in n.input if x in inits and x not in seen]
        seen.update(names)
        if n.op_type == "QMoE":
            k = next(a.i for a in n.attribute if a.name == "k")
            for x in names:
                t = inits[x]
                size = nbytes(t)
                parts["experts_total"] += size
                experts = t.dims[0] if t.dims else 1
                parts["experts_active"] += size * k // experts if len(t.dims) >= 2 else size
        elif n.op_type == "Gather" or (n.op_type == "GroupQueryAttention"):
            for x in names:
                t = inits[x]
                if len(t.dims) == 2 and x in (n.input[0], "cos_cache", "sin_cache"):
                    parts["rows"] += nbytes(t) // t.dims[0]  # one row
                else:
                    parts["dense"] += nbytes(t)
        elif "lm_head" in n.name:
            parts["lm_head"] += sum(nbytes(inits[x]) for x in names)
        else:
            parts["dense"] += sum(nbytes(inits[x]) for x in names)

    window = (dec.get("sliding_window") or {}).get("window_size")
    sliding = set((dec.get("sliding_window") or {}).get("layers", []))
    kv_type = next(v.type.tensor_type.elem_type for v in g.input if v.name.startswith("past_key_values."))
    per_pos = 2 * dec["num_key_value_heads"] * dec["head_size"] * ELEM_BYTES[kv_type]
    for layer in range(dec["num_hidden_layers"]):
        positions = min(ctx, window) if (layer in sliding and window) else ctx
        parts["kv"] += per_pos * positions
    total = parts["dense"] + parts["experts_active"] + parts["lm_head"] + parts["rows"] + parts["kv"]
    return total, parts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--ctx", type=int, required=True, help="tokens in the cache at the measured step")
    ap.add_argument("--gb-s", type=float, required=True, help="memory bandwidth, 10^9 bytes/s")
    ap.add_argument("--measured-tok-s", type=float, default=None)
    a = ap.parse_args()
    total, parts = decode_bytes(a.model, a.ctx)
    bound_tok_s = a.gb_s * 1e9 / total
    out = {"bytes_per_token": total, "parts": parts, "ctx": a.ctx, "gb_s": a.gb_s, "bound_tok_s": bound_tok_s}
    if a.measured_tok_s:
        out["fraction_of_bound"] = a.measured_tok_s / bound_tok_s
    print(json.dumps(out))


if __name__ == "__main__":
    main()
