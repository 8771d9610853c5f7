#!/usr/bin/env python3
"""onnxruntime-genai's Generator on rendered chat turns, one after another: the peer of the prefix
cache benchmark (benches/prefix_cache/bench.py). genai keeps nothing between generators, so each
turn prefills its whole prompt.

    genai_turns.py --model FOLDER --tokens FILE [--max-tokens 32] [--threads N]

FILE: JSON lines `{"id", "prompt": [token ids]}` (harmony/examples/render_jsonl's output).
Prints one JSON line per turn: id, prompt_tokens, ttft_s (prompt appended and the first token
generated), latency_s, completion_tokens; greedy, ended by <|return|>/<|call|> or max tokens.
"""
import argparse
import json
import os
import sys
import time

import onnxruntime_genai as og

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "runtime"))
from genai_bench import with_threads  # noqa: E402

# <|return|>, <|call|> of o200k_harmony
STOP = {200002, 200012}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    model = og.Model(with_threads(args.model, args.threads))
    with open(args.tokens) as f:
        rows = [json.loads(l) for l in f if l.strip()]
    for row in rows:
        ids = row["prompt"]
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + args.max_tokens, do_sample=False)
        start = time.perf_counter()
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        gen.generate_next_token()
        ttft = time.perf_counter() - start
        n = 1
        while n < args.max_tokens and int(gen.get_next_tokens()[0]) not in STOP and not gen.is_done():
            gen.generate_next_token()
            n += 1
        print(json.dumps({"id": row["id"], "prompt_tokens": len(ids), "ttft_s": ttft,
                          "latency_s": time.perf_counter() - start, "completion_tokens": n}), flush=True)


if __name__ == "__main__":
    main()
