#!/usr/bin/env python3
"""Builds the gpt-oss-20b-shaped benchmark models of issue 18 (random weights, real shape).

gpt-oss-20b's shape: hidden 2880, 64 query and 8 KV heads of 64, 32 experts with top-4 routing,
intermediate 2880, vocabulary 201,088, sliding (128) and full attention alternating, YaRN RoPE,
attention sinks. The weights cannot be downloaded here; random weights of the exact shape run the
same kernels (MatMulNBits, QMoE, GroupQueryAttention with sinks) and move the same bytes.

Three folders under CACHE (each made once; a folder with a `.done` marker is kept):

  fewlayer-int4-cpu/   LAYERS layers (default 2: one sliding, one full), exported by
                       onnxruntime-genai's builder `-p int4 -e cpu`;
  fewlayer-int4-cuda/  the same checkpoint exported `-p int4 -e cuda` (runs only on a GPU; here its
                       genai_config.json and graph I/O are checked by our loader's tests);
  full-int4-cpu/       24 layers, made from fewlayer-int4-cpu without holding 21 B parameters:
                       the two template layers' subgraphs are repeated, every packed int4 tensor
                       gets fresh random bytes written straight to the external data file, and
                       float tensors (norms, biases, scales, sinks) are copied from the template of
                       the same layer type.

The builder makes int4 (QMoE) experts only from the MXFP4 tensors the real checkpoint carries
(`model.layers.N.mlp.experts.{gate_up,down}_proj_{blocks,scales}`, uint8, blocks of 32 values,
scales as E8M0 exponents), so the random experts are written in that layout too, beside the
bfloat16 weights transformers loads.

Each folder also gets io.json (the graph's inputs and outputs, for runtimes/tests/realshape_io.rs).

Usage: make_models.py --cache DIR [--layers 2] [--full-layers 24] [--skip-cuda] [--copy-fixture DIR]
Runs in the tools venv (.venv-tools: torch, transformers, onnxruntime-genai, onnx, onnx-ir).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NANO_TAR = os.path.join(ROOT, "runtimes", "nano", "gpt-oss-nano.tar.xz")

HIDDEN = 2880
INTER = 2880
EXPERTS = 32
VOCAB = 201088
# E8M0 exponent of the random experts' block scales: 2^(120-127) = 1/128, so the FP4 codes
# (magnitudes 0..6, RMS 2.9) give weights of RMS about 0.023, like the normal(0, 0.02) of the rest.
MXFP4_SCALE_EXPONENT = 120


def log(msg):
    print(f"make_models: {msg}", flush=True)


def tokenizer_into(folder):
    """The o200k_harmony tokenizer.json (201,088 ids) that ships inside the embedded gpt-oss-nano."""
    with tarfile.open(NANO_TAR, "r:xz") as tar:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            member = tar.getmember(name)
            with tar.extractfile(member) as src, open(os.path.join(folder, name), "wb") as dst:
                shutil.copyfileobj(src, dst)


def make_checkpoint(hf_dir, layers):
    """A random bfloat16 gpt-oss checkpoint of the 20b shape with `layers` layers, plus MXFP4 experts."""
    import torch
    from safetensors.torch import save_file
    from transformers import GptOssConfig, GptOssForCausalLM

    layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    cfg = GptOssConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=layers,
        num_attention_heads=64,
        num_key_value_heads=8,
        head_dim=64,
        num_local_experts=EXPERTS,
        num_experts_per_tok=4,
        sliding_window=128,
        layer_types=layer_types,
        max_position_embeddings=131072,
        rope_theta=150000.0,
        rope_scaling={
            "rope_type": "yarn",
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 4096,
        },
        attention_bias=True,
        tie_word_embeddings=False,
        eos_token_id=200002,
        pad_token_id=199999,
        bos_token_id=199998,
    )
    t0 = time.time()
    torch.manual_seed(0)
    # Built directly in bfloat16 so that the model never exists in float32.
    torch.set_default_dtype(torch.bfloat16)
    model = GptOssForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif p.dim() >= 2:
                p.normal_(0.0, 0.02)
            else:
                p.zero_()
    os.makedirs(hf_dir, exist_ok=True)
    model.save_pretrained(hf_dir, safe_serialization=True, max_shard_size="100GB")
    del model

    # The MXFP4 experts, in the checkpoint's layout: blocks [E, N, K/32, 16] (two FP4 codes per
    # byte), scales [E, N, K/32].
    gen = torch.Generator().manual_seed(1)
    extra = {}
    for i in range(layers):
        prefix = f"model.layers.{i}.mlp.experts"
        for proj, n, k in (("gate_up_proj", 2 * INTER, HIDDEN), ("down_proj", HIDDEN, INTER)):
            extra[f"{prefix}.{proj}_blocks"] = torch.randint(
                0, 256, (EXPERTS, n, k // 32, 16), dtype=torch.uint8, generator=gen
            )
            extra[f"{prefix}.{proj}_scales"] = torch.full(
                (EXPERTS, n, k // 32), MXFP4_SCALE_EXPONENT, dtype=torch.uint8
            )
    save_file(extra, os.path.join(hf_dir, "mxfp4-experts.safetensors"))

    # One index over both files, so the builder's MXFP4 loader finds the experts by name.
    from safetensors import safe_open

    weight_map = {}
    for fname in sorted(os.listdir(hf_dir)):
        if fname.endswith(".safetensors"):
            with safe_open(os.path.join(hf_dir, fname), framework="pt") as f:
                for key in f.keys():
                    weight_map[key] = fname
    with open(os.path.join(hf_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    tokenizer_into(hf_dir)
    log(f"checkpoint of {layers} layers in {hf_dir} ({time.time() - t0:.0f} s)")


def export(hf_dir, out, device, cache):
    t0 = time.time()
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", hf_dir, "-o", out,
           "-p", "int4", "-e", device, "-c", cache]
    log(" ".join(cmd))
    subprocess.run(cmd, check=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if not os.path.exists(os.path.join(out, name)):
            shutil.copy(os.path.join(hf_dir, name), out)
    log(f"exported {out} in {time.time() - t0:.0f} s")


def write_io(folder):
    """io.json: the graph's inputs and outputs (name, ONNX element type, shape with -1 for a
    symbolic dimension), read without the weights. runtimes/tests/realshape_io.rs checks our
    loader's reading of genai_config.json against it (the CUDA export cannot run here)."""
    import onnx

    m = onnx.load(os.path.join(folder, "model.onnx"), load_external_data=False)

    def value(v):
        t = v.type.tensor_type
        return {"name": v.name, "elem_type": t.elem_type,
                "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]}

    with open(os.path.join(folder, "io.json"), "w") as f:
        json.dump({"inputs": [value(v) for v in m.graph.input],
                   "outputs": [value(v) for v in m.graph.output]}, f, indent=1)


def done(folder):
    return os.path.exists(os.path.join(folder, ".done"))


def mark_done(folder):
    with open(os.path.join(folder, ".done"), "w") as f:
        f.write(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="folder that holds the models")
    ap.add_argument("--layers", type=int, default=2, help="layers of the few-layer models (even, 2-4)")
    ap.add_argument("--full-layers", type=int, default=24)
    ap.add_argument("--skip-cuda", action="store_true", help="do not make the CUDA export")
    ap.add_argument("--skip-full", action="store_true", help="do not make the 24-layer model")
    ap.add_argument("--copy-fixture", metavar="DIR",
                    help="copy the exports' genai_config.json and io.json to DIR/int4-cpu and DIR/int4-cuda "
                         "(runtimes/fixture/realshape, read by runtimes/tests/realshape_io.rs)")
    args = ap.parse_args()
    if args.layers < 2 or args.layers % 2:
        ap.error("--layers must be even and at least 2 (one sliding and one full layer per pair)")

    cache = os.path.abspath(args.cache)
    os.makedirs(cache, exist_ok=True)
    hf_dir = os.path.join(cache, f"hf-{args.layers}l")
    few_cpu = os.path.join(cache, "fewlayer-int4-cpu")
    few_cuda = os.path.join(cache, "fewlayer-int4-cuda")
    full = os.path.join(cache, "full-int4-cpu")
    builder_cache = os.path.join(cache, "builder-cache")

    need_hf = not done(few_cpu) or (not args.skip_cuda and not done(few_cuda))
    if need_hf and not done(hf_dir):
        shutil.rmtree(hf_dir, ignore_errors=True)
        make_checkpoint(hf_dir, args.layers)
        mark_done(hf_dir)
    if not done(few_cpu):
        shutil.rmtree(few_cpu, ignore_errors=True)
        export(hf_dir, few_cpu, "cpu", builder_cache)
        mark_done(few_cpu)
    if not args.skip_cuda and not done(few_cuda):
        shutil.rmtree(few_cuda, ignore_errors=True)
        export(hf_dir, few_cuda, "cuda", builder_cache)
        mark_done(few_cuda)
    if not args.skip_full and not done(full):
        shutil.rmtree(full, ignore_errors=True)
        subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "repeat_layers.py"),
                        "--template", few_cpu, "--out", full, "--layers", str(args.full_layers)], check=True)
        mark_done(full)
    shutil.rmtree(builder_cache, ignore_errors=True)
    for folder in (few_cpu, few_cuda, full):
        if done(folder) and not os.path.exists(os.path.join(folder, "io.json")):
            write_io(folder)
    if args.copy_fixture:
        # The committed copies the loader's test reads: genai_config.json and io.json per export.
        for folder, name in ((few_cpu, "int4-cpu"), (few_cuda, "int4-cuda")):
            if done(folder):
                dest = os.path.join(args.copy_fixture, name)
                os.makedirs(dest, exist_ok=True)
                for f in ("genai_config.json", "io.json"):
                    shutil.copy(os.path.join(folder, f), dest)
                log(f"copied {folder}'s genai_config.json and io.json to {dest}")
    for folder in (few_cpu, few_cuda, full):
        if done(folder):
            size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
            log(f"{folder}: {size / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
