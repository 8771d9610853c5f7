#!/usr/bin/env python3
"""Where a decode step's time goes on a gpt-oss export (issue 18): ONNX Runtime's own profiler
over the kernels that both engines run, by operator type, against the bytes each type reads.

Runs the model with plain onnxruntime (the library ours and genai load), shared-buffer style:
a prompt of --prompt-len tokens, then --steps decode steps of one token; profiles the decode
steps only. For each operator type: milliseconds per step, share of the step, the bytes of its
weights one step reads (experts: k of E), and the bandwidth that implies. Prints a markdown table
and one JSON line.

Usage: profile.py --model DIR [--threads N] [--prompt-len 128] [--steps 16]
"""
import argparse
import collections
import glob
import json
import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bound import ELEM_BYTES, nbytes  # noqa: E402


def weight_bytes_by_op(model_path):
    m = onnx.load(model_path, load_external_data=False)
    inits = {t.name: t for t in m.graph.initializer}
    by_op = collections.Counter()
    for n in m.graph.node:
        names = [x for x in n.input if x in inits]
        if n.op_type == "QMoE":
            k = next(a.i for a in n.attribute if a.name == "k")
            for x in names:
                t = inits[x]
                by_op["QMoE"] += nbytes(t) * k // t.dims[0] if len(t.dims) >= 2 else nbytes(t)
        elif n.op_type == "Gather":
            for x in names:
                t = inits[x]
                by_op["Gather"] += nbytes(t) // t.dims[0] if len(t.dims) == 2 else 0
        elif n.op_type == "GroupQueryAttention":
            by_op[n.op_type] += sum(ELEM_BYTES[inits[x].data_type] * (inits[x].dims[-1] if inits[x].dims else 1)
                                    for x in names)
        else:
            by_op[n.op_type] += sum(nbytes(inits[x]) for x in names)
    return by_op


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=16)
    a = ap.parse_args()
    with open(os.path.join(a.model, "genai_config.json")) as f:
        dec = json.load(f)["model"]["decoder"]
    path = os.path.join(a.model, dec["filename"])
    layers, heads, hd = dec["num_hidden_layers"], dec["num_key_value_heads"], dec["head_size"]
    sw = dec.get("sliding_window") or {}
    windowed = set(sw.get("layers", [])) if sw else set()
    cap = a.prompt_len + a.steps
    window_cap = min(cap, sw["window_size"] + 16) if sw else cap

    def session(profile_dir=None):
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        if profile_dir:
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(profile_dir, "decode")
        return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def feeds(ids, total, past):
        f = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, total), dtype=np.int64)}
        for i in range(layers):
            for kv in ("key", "value"):
                f[f"past_key_values.{i}.{kv}"] = past[(i, kv)]
        return f

    prompt = [((i * 7919 + 17) % 3000) + 1 for i in range(a.prompt_len)]
    past = {(i, kv): np.zeros((1, heads, window_cap if i in windowed else cap, hd), np.float32)
            for i in range(layers) for kv in ("key", "value")}
    tmp = tempfile.mkdtemp(prefix="realshape-profile-")
    s = session(tmp)
    names = [o.name for o in s.get_outputs()]
    out = dict(zip(names, s.run(None, feeds(prompt, a.prompt_len, past))))
    total = a.prompt_len
    for _ in range(a.steps):
        past = {(i, kv): out[f"present.{i}.{kv}"] for i in range(layers) for kv in ("key", "value")}
        token = int(np.argmax(out["logits"][0, -1]))
        total += 1
        out = dict(zip(names, s.run(None, feeds([token], total, past))))
    trace = s.end_profiling()
    with open(trace) as f:
        events = json.load(f)
    # Node events of each run; the first run is the prefill.
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    runs.sort(key=lambda e: e["ts"])
    decode_start = runs[1]["ts"] if len(runs) > 1 else 0
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= decode_start:
            per_op[e["args"].get("op_name", "?")] += e["dur"]
    step_us = sum(r["dur"] for r in runs[1:]) / max(1, len(runs) - 1)
    bytes_by_op = weight_bytes_by_op(path)
    rows = []
    for op, us in per_op.most_common():
        ms = us / a.steps / 1000
        b = bytes_by_op.get(op, 0)
        rows.append({"op": op, "ms_per_step": ms, "share": us / a.steps / step_us if step_us else None,
                     "weight_bytes_per_step": b, "gb_s": (b / (ms / 1000) / 1e9) if ms and b else None})
    print(f"Decode step: {step_us / 1000:.1f} ms ({1e6 / step_us:.2f} tokens/s), {a.threads} threads, "
          f"context {a.prompt_len}..{total}, ONNX Runtime {ort.__version__} profiler.\n")
    print("| operator | ms per step | share | weight bytes read per step | implied GB/s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        share = f"{100 * r['share']:.1f}%" if r["share"] is not None else "–"
        gbs = f"{r['gb_s']:.1f}" if r["gb_s"] else "–"
        print(f"| {r['op']} | {r['ms_per_step']:.2f} | {share} | {r['weight_bytes_per_step'] / 1e6:,.1f} MB | {gbs} |")
    print(json.dumps({"step_ms": step_us / 1000, "threads": a.threads, "ops": rows}))
    for p in glob.glob(os.path.join(tmp, "*")):
        os.remove(p)
    os.rmdir(tmp)


if __name__ == "__main__":
    main()
