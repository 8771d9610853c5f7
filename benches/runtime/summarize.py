#!/usr/bin/env python3
"""Combines ours.jsonl and genai.jsonl into results.json and summary.md with the ratios."""
import argparse
import json
import os
import platform


def rows(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip().startswith("{")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    ours = rows(os.path.join(a.out, "ours.jsonl"))
    genai = rows(os.path.join(a.out, "genai.jsonl"))
    by = {(r["engine"], r["concurrency"]): r for r in ours + genai}
    conc = sorted({r["concurrency"] for r in ours})
    cfg = os.path.join(a.model, "genai_config.json")
    with open(cfg, encoding="utf-8") as f:
        dec = json.load(f)["model"]["decoder"]
    shape = (f"hidden {dec['hidden_size']}, {dec['num_hidden_layers']} layers, "
             f"{dec['num_attention_heads']}/{dec['num_key_value_heads']} heads of {dec['head_size']}")
    p = ours[0] if ours else {}
    title = (f"ONNX backend vs onnxruntime-genai, CPU ({os.cpu_count()} cores), {shape}, "
             f"prompt {p.get('prompt_len')}, {p.get('new_tokens')} new tokens")
    lines = [
        f"Model folder `{a.model}` ({shape}); greedy, prompt {p.get('prompt_len')} tokens, "
        f"{p.get('new_tokens')} new tokens per request, best of the repeats; CPU, {os.cpu_count()} cores, "
        f"{platform.machine()}. `genai-batch` is one onnxruntime-genai Generator with batch_size=c "
        "(static batching); `genai-threads` is c Generators on c Python threads. genai's session gets as many "
        "intra-op threads as the machine has cores, as ours (left alone, genai runs it on one thread here). "
        "Ratios are ours / the best genai figure.",
        "",
        "| concurrency | ours tok/s | genai-batch tok/s | genai-threads tok/s | ratio (total) | ours prefill tok/s | genai prefill tok/s | ratio (prefill) | ours decode tok/s (seq 1) | genai decode tok/s (seq 1) | ratio (decode) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    goals = []
    for c in conc:
        o = by.get(("ours", c))
        gb = by.get(("genai-batch", c))
        gt = by.get(("genai-threads", c))
        if not o or not gb:
            continue
        best_total = max(x["tokens_per_s"] for x in (gb, gt) if x)
        g_pre = gb["prefill_tokens_per_s"] if c == 1 else max(x["prefill_tokens_per_s"] for x in (gb, gt) if x)
        g_dec = gb["decode_tokens_per_s"]
        fmt = lambda x: f"{x:.1f}"
        lines.append(
            f"| {c} | {fmt(o['tokens_per_s'])} | {fmt(gb['tokens_per_s'])} | {fmt(gt['tokens_per_s']) if gt else '-'} | "
            f"{o['tokens_per_s'] / best_total:.2f}x | {fmt(o['prefill_tokens_per_s'])} | {fmt(g_pre)} | "
            f"{o['prefill_tokens_per_s'] / g_pre:.2f}x | " + (
                f"{fmt(o['decode_tokens_per_s'])} | {fmt(g_dec)} | {o['decode_tokens_per_s'] / g_dec:.2f}x |"
                if c == 1 else "- | - | - |"))
        if c == 1:
            goals.append(("one sequence: ours >= 1.0x genai (total tokens/s)", o["tokens_per_s"] / best_total >= 1.0,
                          o["tokens_per_s"] / best_total))
        if c == 4:
            goals.append(("4 concurrent: ours > genai (total tokens/s, best genai mode)", o["tokens_per_s"] > best_total,
                          o["tokens_per_s"] / best_total))
    lines += [""] + [f"- {'MET' if ok else 'MISSED'}: {name} ({r:.2f}x)" for name, ok, r in goals]
    lines += ["", "Decode tokens/s is shown for one sequence only (one token per step for both engines); at c>1 the "
              "total column counts every generated token, prefill included. Prefill at c>1 is the first request's "
              "prompt tokens over its time to first token."]
    throughput = [{"engine": r["engine"], "concurrency": r["concurrency"], "tokens_per_s": r["tokens_per_s"]}
                  for r in ours + genai]
    with open(os.path.join(a.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"title": title, "throughput": throughput, "ours": ours, "genai": genai,
                   "goals": [{"goal": n, "met": ok, "ratio": r} for n, ok, r in goals]}, f, indent=1)
    with open(os.path.join(a.out, "summary.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
