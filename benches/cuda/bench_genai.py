#!/usr/bin/env python3
"""onnxruntime-genai's own generator on a model folder: the peer of our runtime (issue 9).

Prints one JSON line with: decode tokens/s for one sequence, total tokens/s for
`--batch` sequences decoded together, and time to first token for a prompt of
`--prompt-len` tokens.
"""
import argparse
import json
import time

import numpy as np
import onnxruntime_genai as og


def run(model, prompt, batch, new_tokens):
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + new_tokens, batch_size=batch)
    gen = og.Generator(model, params)
    ids = np.array([prompt] * batch, dtype=np.int32)
    t0 = time.perf_counter()
    gen.append_tokens(ids)
    gen.generate_next_token()
    ttft = time.perf_counter() - t0
    n = 1
    t1 = time.perf_counter()
    while not gen.is_done() and n < new_tokens:
        gen.generate_next_token()
        n += 1
    dt = time.perf_counter() - t1
    return ttft, (n - 1) * batch / dt if dt > 0 else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=2000)
    args = ap.parse_args()
    model = og.Model(args.model)
    rng = np.random.default_rng(0)
    short = [int(x) for x in rng.integers(1000, 100000, size=32)]
    long = [int(x) for x in rng.integers(1000, 100000, size=args.prompt_len)]
    run(model, short, 1, 8)  # warm-up
    _, decode1 = run(model, short, 1, args.new_tokens)
    _, decode_b = run(model, short, args.batch, args.new_tokens)
    ttft, _ = run(model, long, 1, 2)
    print(json.dumps({"engine": "onnxruntime-genai", "decode_tok_s_1": decode1,
                      f"decode_tok_s_{args.batch}": decode_b, "ttft_s_2000": ttft}))


if __name__ == "__main__":
    main()
