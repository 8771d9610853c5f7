#!/usr/bin/env python3
"""Makes a gpt-oss-20b-shaped export with LAYERS layers from a few-layer one, without holding the
weights in memory (issue 18).

The template is onnxruntime-genai's int4 CPU export of the 20b shape with two or more layers
(layer 0 sliding, layer 1 full attention). Layers 0 and 1 are kept; every further layer i is a
copy of layer 1's subgraph (the first layer whose input comes from a previous layer), renamed to
i, with the GroupQueryAttention attributes of layer i % 2 (so even layers keep the 128-token
sliding window and its cache). Every packed int4 tensor of a new layer (`*.qweight`,
`*.weight_Q4`, uint8) gets fresh random bytes; float tensors (norm weights, biases, block scales,
attention sinks) are copied from the template layer of the same type. Tensors are streamed into
the new external data file one at a time, so peak memory is about the largest tensor (265 MB).

Usage: repeat_layers.py --template DIR --out DIR [--layers 24] [--seed 7]
"""
import argparse
import copy
import json
import os
import re
import shutil
import sys
import time

import numpy as np
import onnx
from onnx import helper

ALIGN = 4096  # offsets of the external data file, page-aligned so ONNX Runtime can map them


def ext_info(t):
    info = {e.key: e.value for e in t.external_data}
    return info.get("location"), int(info.get("offset", 0)), int(info["length"])


def set_ext(t, location, offset, length):
    del t.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    t.data_location = onnx.TensorProto.EXTERNAL


def rename(s, src, dst):
    """Renames layer `src`'s names to layer `dst` (and its predecessor's to dst - 1)."""
    if not s:
        return s
    s = s.replace(f"/model/layers.{src}/", f"/model/layers.{dst}/")
    s = s.replace(f"/model/layers.{src - 1}/", f"/model/layers.{dst - 1}/")
    s = s.replace(f"model.layers.{src}.", f"model.layers.{dst}.")
    s = re.sub(rf"^(past_key_values|present)\.{src}\.", rf"\g<1>.{dst}.", s)
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--template", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    t0 = time.time()

    with open(os.path.join(args.template, "genai_config.json")) as f:
        genai = json.load(f)
    dec = genai["model"]["decoder"]
    base_layers = dec["num_hidden_layers"]
    if base_layers < 2 or args.layers < base_layers:
        sys.exit(f"repeat_layers: the template has {base_layers} layers; need at least 2 and at most --layers")
    model = onnx.load(os.path.join(args.template, dec["filename"]), load_external_data=False)
    g = model.graph
    src_data = os.path.join(args.template, dec["filename"] + ".data")
    inits = {t.name: t for t in g.initializer}

    def layer_of(name):
        m = re.search(r"/model/layers\.(\d+)/", name)
        return int(m.group(1)) if m else None

    final = base_layers  # the final norm is named as layer `num_hidden_layers`
    layer_nodes = {i: [n for n in g.node if layer_of(n.name) == i] for i in range(base_layers)}
    tail_nodes = [n for n in g.node if layer_of(n.name) == final]
    # Unnamed-by-layer nodes before the final norm (inputs, mask, embedding, constants) come first;
    # those after it (the lm_head) come last. The builder writes the graph in topological order.
    final_at = min(k for k, n in enumerate(g.node) if layer_of(n.name) == final)
    head_nodes = [n for k, n in enumerate(g.node) if layer_of(n.name) is None and k < final_at]
    post_nodes = [n for k, n in enumerate(g.node) if layer_of(n.name) is None and k > final_at]
    gqa_attrs = {
        i % 2: [copy.deepcopy(a) for a in n.attribute]
        for i in (0, 1)
        for n in layer_nodes[i]
        if n.op_type == "GroupQueryAttention"
    }

    os.makedirs(args.out, exist_ok=True)
    data_name = dec["filename"] + ".data"
    out_data = open(os.path.join(args.out, data_name), "wb")
    rng = np.random.default_rng(args.seed)

    def copy_bytes(t_src):
        loc, off, length = ext_info(t_src)
        with open(os.path.join(args.template, loc), "rb") as f:
            f.seek(off)
            return f.read(length)

    def emit(t_src, name, fresh_random):
        pos = out_data.tell()
        pad = (-pos) % ALIGN
        if pad:
            out_data.write(b"\0" * pad)
            pos += pad
        _, _, length = ext_info(t_src)
        if fresh_random:
            # Written in 64 MB pieces: the largest tensor is 265 MB.
            left = length
            while left:
                n = min(left, 64 << 20)
                out_data.write(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
                left -= n
        else:
            out_data.write(copy_bytes(t_src))
        t = onnx.TensorProto()
        t.name = name
        t.data_type = t_src.data_type
        t.dims.extend(t_src.dims)
        set_ext(t, data_name, pos, length)
        return t

    new_inits = []
    done_inits = set()

    def take(name, src_name=None, fresh_random=False):
        if name in done_inits:
            return
        done_inits.add(name)
        new_inits.append(emit(inits[src_name or name], name, fresh_random))

    # Shared tensors and the template layers, as they are.
    for n in head_nodes:
        for i in n.input:
            if i in inits:
                take(i)
    nodes = list(head_nodes)
    for i in range(base_layers):
        for n in layer_nodes[i]:
            for x in n.input:
                if x in inits:
                    take(x)
        nodes.extend(layer_nodes[i])

    def renamed(n, src, dst, source_of=lambda x: x, fresh_random=lambda x: False):
        """Node `n` of layer `src` as layer `dst`; its initializers are written under their new
        names, from `source_of(name)` (fresh random bytes where `fresh_random(name)`)."""
        m = copy.deepcopy(n)
        m.name = rename(n.name, src, dst)
        del m.input[:]
        del m.output[:]
        for x in n.input:
            y = rename(x, src, dst)
            m.input.append(y)
            if x in inits:
                take(y, source_of(x), fresh_random=fresh_random(x))
        m.output.extend(rename(x, src, dst) for x in n.output)
        return m

    # New layers: layer 1's subgraph renamed, with layer i % 2's attention attributes; packed int4
    # tensors get fresh random bytes, floats come from the template layer of the same kind.
    template = 1
    for i in range(base_layers, args.layers):
        kind = i % 2  # 0: sliding, 1: full (the template's own pattern)

        def same_kind(x, kind=kind):
            src_name = x.replace(f"model.layers.{template}.", f"model.layers.{kind}.")
            return src_name if src_name in inits else x

        for n in layer_nodes[template]:
            m = renamed(n, template, i, same_kind,
                        lambda x: inits[x].data_type == onnx.TensorProto.UINT8)
            if m.op_type == "GroupQueryAttention":
                del m.attribute[:]
                m.attribute.extend(copy.deepcopy(a) for a in gqa_attrs[kind])
            nodes.append(m)
        print(f"repeat_layers: layer {i} ({'sliding' if kind == 0 else 'full'}) written, "
              f"{out_data.tell() / 1e9:.1f} GB so far", flush=True)

    # The final norm and the lm_head, after the last layer.
    for n in tail_nodes + post_nodes:
        nodes.append(renamed(n, final, args.layers))
    out_data.close()

    # Graph inputs and outputs: keys of every layer, then values, as the builder orders them.
    def kv_io(items, prefix):
        by_name = {v.name: v for v in items}
        out = []
        for kind in ("key", "value"):
            for i in range(args.layers):
                src = by_name[f"{prefix}.{i % 2}.{kind}"]
                v = copy.deepcopy(src)
                v.name = f"{prefix}.{i}.{kind}"
                out.append(v)
        return out

    inputs = [v for v in g.input if not v.name.startswith("past_key_values.")]
    outputs = [v for v in g.output if not v.name.startswith("present.")]
    new_graph = helper.make_graph(
        nodes, g.name, inputs + kv_io(g.input, "past_key_values"), outputs + kv_io(g.output, "present"),
        initializer=new_inits,
    )
    new_model = helper.make_model(new_graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    new_model.producer_name = model.producer_name
    onnx.save(new_model, os.path.join(args.out, dec["filename"]))

    dec["num_hidden_layers"] = args.layers
    if "sliding_window" in dec:
        dec["sliding_window"]["layers"] = list(range(0, args.layers, 2))
    with open(os.path.join(args.out, "genai_config.json"), "w") as f:
        json.dump(genai, f, indent=4)
    for name in os.listdir(args.template):
        if name.startswith("tokenizer") or name.endswith(".jinja"):
            shutil.copy(os.path.join(args.template, name), args.out)
    size = os.path.getsize(os.path.join(args.out, data_name))
    print(f"repeat_layers: {args.layers} layers in {args.out}: {size / 1e9:.2f} GB of weights, "
          f"{time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
