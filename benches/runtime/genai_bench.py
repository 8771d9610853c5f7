#!/usr/bin/env python3
"""onnxruntime-genai's own generator on a model folder: the peer of our ONNX backend (issue 3).

For each concurrency c, two ways genai can serve c requests, both greedy, with the same prompts
as runtimes/examples/bench_onnx.rs:
  genai-batch    one og.Generator with batch_size=c (static batching, genai's fastest path);
  genai-threads  c og.Generator objects, each on its own Python thread (like c requests).
Prints one JSON object per line, the fields of bench_onnx.rs, beginning with the load
(`{"engine":"genai","phase":"load","load_s","rss_bytes"}`, resident memory right after og.Model)
and, with --greedy-prompts N, the greedy ids of N prompts (`{"phase":"greedy","index","tokens"}`).
"""
import argparse
import atexit
import json
import os
import shutil
import tempfile
import threading
import time

import numpy as np
import onnxruntime_genai as og


def prompt(index, length, token_range):
    return [((i * 7919 + index * 104729 + 17) % token_range) + 1 for i in range(length)]


def with_threads(folder, threads):
    """The model folder as genai sees it with `intra_op_num_threads` set in its session options
    (a temporary folder of links beside a rewritten genai_config.json): genai's generator
    otherwise runs this machine's sessions on one thread, where ours uses every core."""
    view = tempfile.mkdtemp(prefix="genai-threads-")
    atexit.register(shutil.rmtree, view, ignore_errors=True)
    for name in os.listdir(folder):
        if name != "genai_config.json":
            os.symlink(os.path.join(os.path.abspath(folder), name), os.path.join(view, name))
    with open(os.path.join(folder, "genai_config.json")) as f:
        config = json.load(f)
    options = config["model"]["decoder"].setdefault("session_options", {})
    options["intra_op_num_threads"] = threads
    with open(os.path.join(view, "genai_config.json"), "w") as f:
        json.dump(config, f, indent=1)
    return view


def rss_bytes():
    """Resident set size of this process (VmRSS of /proc/self/status), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def kv_length(tokens):
    """genai's max_length, which sizes its KV buffers: a sliding-window cache (gpt-oss exports
    from builder 0.18) refuses buffers shorter than the window (128), so at least 256."""
    return max(tokens, 128)


def greedy_ids(model, prompt_ids, new_tokens):
    """The greedy continuation of one prompt: exactly new_tokens ids."""
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=kv_length(len(prompt_ids) + new_tokens),
                              min_length=len(prompt_ids) + new_tokens, batch_size=1)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array([prompt_ids], dtype=np.int32))
    for _ in range(new_tokens):
        if gen.is_done():
            break
        gen.generate_next_token()
    return [int(t) for t in gen.get_sequence(0)[len(prompt_ids):]]


def generate(model, prompts, new_tokens):
    """Greedy generation of exactly new_tokens per row; returns (ttft, decode seconds, tokens per row)."""
    plen = len(prompts[0])
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=kv_length(plen + new_tokens),
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
    ap.add_argument("--greedy-prompts", type=int, default=0)
    ap.add_argument("--skip-threads", action="store_true", help="only genai-batch for c > 1")
    ap.add_argument("--intra-op-threads", type=int, default=0,
                    help="ONNX Runtime intra-op threads of genai's session (0: genai's default)")
    args = ap.parse_args()
    folder = with_threads(args.model, args.intra_op_threads) if args.intra_op_threads else args.model
    t = time.perf_counter()
    model = og.Model(folder)
    print(json.dumps({"engine": "genai", "phase": "load", "load_s": time.perf_counter() - t,
                      "rss_bytes": rss_bytes()}), flush=True)
    for i in range(args.greedy_prompts):
        ids = greedy_ids(model, prompt(i, args.prompt_len, args.token_range), args.new_tokens)
        print(json.dumps({"engine": "genai", "phase": "greedy", "index": i, "tokens": ids}), flush=True)
    # Warm-up, at most 32 prompt tokens (a long --prompt-len would double the cost of a prefill run).
    generate(model, [prompt(999, min(args.prompt_len, 32), args.token_range)], 4)

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
        if c == 1 or args.skip_threads:
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
