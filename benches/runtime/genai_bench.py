#!/usr/bin/env python3
"""onnxruntime-genai's own generator on a model folder: the peer of our ONNX backend (issue 3).

For each concurrency c, two ways genai can serve c requests, both greedy, with the same prompts
as runtimes/examples/bench_onnx.rs:
  genai-batch    one og.Generator with batch_size=c (static batching, genai's fastest path);
  genai-threads  c og.Generator objects, each on its own Python thread (like c requests).
Prints one JSON object per line, the fields of bench_onnx.rs.
"""
import argparse
import json
import threading
import time

import numpy as np
import onnxruntime_genai as og


def prompt(index, length, token_range):
    return [((i * 7919 + index * 104729 + 17) % token_range) + 1 for i in range(length)]


def generate(model, prompts, new_tokens):
    """Greedy generation of exactly new_tokens per row; returns (ttft, decode seconds, tokens per row)."""
    plen = len(prompts[0])
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=plen + new_tokens,
                              min_length=plen + new_tokens, batch_size=len(prompts))
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(np.array(prompts, dtype=np.int32))
    gen.generate_next_token()
    t1 = time.perf_counter()
    n = 1
    while not gen.is_done() and n < new_tokens:
        gen.generate_next_token()
        n += 1
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, n


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--concurrency", default="1,2,4,8")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--token-range", type=int, default=3000)
    args = ap.parse_args()
    model = og.Model(args.model)
    generate(model, [prompt(999, args.prompt_len, args.token_range)], 4)  # warm-up

    for c in [int(x) for x in args.concurrency.split(",")]:
        prompts = [prompt(i, args.prompt_len, args.token_range) for i in range(c)]
        # One generator, batch c.
        best = None
        for _ in range(max(1, args.repeats)):
            t = time.perf_counter()
            ttft, dec, n = generate(model, prompts, args.new_tokens)
            wall = time.perf_counter() - t
            if best is None or wall < best[0]:
                best = (wall, ttft, dec, n)
        wall, ttft, dec, n = best
        print(json.dumps({
            "engine": "genai-batch", "concurrency": c, "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens, "wall_s": wall, "tokens_per_s": c * n / wall,
            "ttft_s": ttft, "prefill_tokens_per_s": c * args.prompt_len / ttft,
            "decode_tokens_per_s": c * (n - 1) / dec,
        }), flush=True)
        if c == 1:
            continue
        # c generators on c threads.
        best = None
        for _ in range(max(1, args.repeats)):
            results = [None] * c

            def work(i):
                results[i] = generate(model, [prompts[i]], args.new_tokens)

            threads = [threading.Thread(target=work, args=(i,)) for i in range(c)]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            wall = time.perf_counter() - t
            if best is None or wall < best[0]:
                best = (wall, results)
        wall, results = best
        tokens = sum(r[2] for r in results)
        print(json.dumps({
            "engine": "genai-threads", "concurrency": c, "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "ttft_s": results[0][0], "prefill_tokens_per_s": args.prompt_len / results[0][0],
            "decode_tokens_per_s": (results[0][2] - 1) / results[0][1],
        }), flush=True)


if __name__ == "__main__":
    main()
