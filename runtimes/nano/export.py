#!/usr/bin/env python3
"""Export trained gpt-oss-nano with onnxruntime-genai's model builder and pack it.

    export.py HF_DIR ONNX_DIR [--archive runtimes/nano/gpt-oss-nano.tar.xz]

HF_DIR is train.py's output. The o200k_harmony tokenizer.json comes from
runtimes/fixture/make_tokenizer.py (built offline from tiktoken-rs's
o200k_base.tiktoken). The archive is a deterministic tar.xz of the model folder
(sorted names, zero mtimes and owners); the zero vocabulary rows compress away.
"""
import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fixture"))

import make_tokenizer  # noqa: E402

MAX_ARCHIVE_BYTES = 8 * 1000 * 1000


def pack(onnx_dir, archive):
    names = sorted(os.listdir(onnx_dir))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in names:
            path = os.path.join(onnx_dir, name)
            ti = tarfile.TarInfo(name)
            ti.size = os.path.getsize(path)
            ti.mtime = 0
            ti.mode = 0o644
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            with open(path, "rb") as f:
                tar.addfile(ti, f)
    r = subprocess.run(["xz", "-9e", "-T1", "-c"], input=buf.getvalue(), capture_output=True, check=True)
    with open(archive, "wb") as f:
        f.write(r.stdout)
    return names, len(r.stdout)


def round_to_bf16(hf_dir):
    """Weights at bf16 precision in fp32 storage (idempotent; train.py already does it):
    the low 16 bits of every weight are zero and compress away."""
    import torch
    from safetensors.torch import load_file, save_file

    path = os.path.join(hf_dir, "model.safetensors")
    sd = load_file(path)
    sd = {k: v.to(torch.bfloat16).to(torch.float32) if v.is_floating_point() else v for k, v in sd.items()}
    save_file(sd, path, metadata={"format": "pt"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hf_dir")
    ap.add_argument("onnx_dir")
    ap.add_argument("--archive", default=os.path.join(HERE, "gpt-oss-nano.tar.xz"))
    args = ap.parse_args()

    round_to_bf16(args.hf_dir)
    tiktoken_file = make_tokenizer.find_tiktoken_file()
    make_tokenizer.build(args.hf_dir, tiktoken_file)
    if os.path.isdir(args.onnx_dir):
        shutil.rmtree(args.onnx_dir)
    cache = args.onnx_dir.rstrip("/") + ".cache"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", args.hf_dir,
                    "-o", args.onnx_dir, "-p", "fp32", "-e", "cpu", "-c", cache], check=True, env=env)
    shutil.rmtree(cache, ignore_errors=True)
    # the builder re-saves the tokenizer through transformers; keep the exact files
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(args.hf_dir, name), os.path.join(args.onnx_dir, name))
    with open(os.path.join(args.onnx_dir, "genai_config.json")) as f:
        cfg = json.load(f)
    print(json.dumps(cfg["model"], indent=1))
    names, size = pack(args.onnx_dir, args.archive)
    print(f"packed {names} into {args.archive}: {size} bytes")
    if size > MAX_ARCHIVE_BYTES:
        sys.exit(f"archive is {size} bytes, over the {MAX_ARCHIVE_BYTES} limit")


if __name__ == "__main__":
    main()
