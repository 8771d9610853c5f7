#!/usr/bin/env python3
"""Builds the gpt-oss-20b-shaped benchmark model on the GPU machine (issue 9).

Shape of gpt-oss-20b: hidden 2880, 64 attention heads and 8 KV heads of size 64,
32 experts with top-4 routing, vocabulary 201,088, sliding (128) and full
attention alternating. Random weights (fixed seed) and fewer layers than the
real 24 (default 4), so per-layer timings extrapolate to the full model.

Exported with onnxruntime-genai's builder, int4 for CUDA:
    python -m onnxruntime_genai.models.builder -i HF_DIR -o OUT -p int4 -e cuda

Usage: make_model.py --out /tmp/gptoss20b-4l [--layers 4] [--tokenizer tokenizer.json]
"""
import argparse
import os
import shutil
import subprocess
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="output folder of the ONNX export")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokenizer", required=True, help="o200k_harmony tokenizer.json")
    ap.add_argument("--precision", default="int4")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()

    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(args.layers)]
    cfg = GptOssConfig(
        vocab_size=201088,
        hidden_size=2880,
        intermediate_size=2880,
        num_hidden_layers=args.layers,
        num_attention_heads=64,
        num_key_value_heads=8,
        head_dim=64,
        num_local_experts=32,
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
    hf_dir = args.out.rstrip("/") + "-hf"
    t0 = time.time()
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(dev):
        model = GptOssForCausalLM(cfg).to(torch.bfloat16)
    # Random weights with a sane scale, so activations stay finite through the layers.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
    model.save_pretrained(hf_dir, safe_serialization=True)
    shutil.copy(args.tokenizer, os.path.join(hf_dir, "tokenizer.json"))
    params = sum(p.numel() for p in model.parameters())
    print(f"make_model: {params/1e9:.2f} B params, HF folder written in {time.time()-t0:.0f}s", flush=True)
    del model
    if dev == "cuda":
        torch.cuda.empty_cache()

    t0 = time.time()
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", hf_dir, "-o", args.out,
           "-p", args.precision, "-e", args.device, "-c", args.out.rstrip("/") + "-cache"]
    print("make_model:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    print(f"make_model: export done in {time.time()-t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
