#!/usr/bin/env python3
"""Tables of benches/realshape/run (issue 18): ours against onnxruntime-genai on the 20b-shaped
int4 models, with the ratios, the greedy-id comparison and the fraction of the bandwidth bound.

Reads OUT/triad.json and, per model, OUT/MODEL/{file.json,genai.jsonl,ours.jsonl,
genai_prefill.jsonl,ours_prefill.jsonl}; writes OUT/summary.md and OUT/results.json.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bound import decode_bytes  # noqa: E402

TARGETS = {
    "decode_1": 1.0,  # ours / genai decode tokens/s, one sequence
    "total_4": 1.3,  # ours / genai total tokens/s, 4 sequences
    "bound_fraction": 0.60,  # ours decode / bandwidth bound, one sequence
    "rss_over_file": 1.1,  # resident after load / model file size
}


def lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(x) for x in f if x.strip().startswith("{")]


def pick(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def fmt(x, digits=2):
    return "–" if x is None else f"{x:,.{digits}f}"


def ratio(a, b):
    return None if not a or not b else a / b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--prompt-len", type=int, required=True)
    ap.add_argument("--new-tokens", type=int, required=True)
    ap.add_argument("--prefill-len", type=int, required=True)
    ap.add_argument("--seconds", type=int, default=0)
    a = ap.parse_args()

    with open(os.path.join(a.out, "triad.json")) as f:
        triad = json.load(f)
    gb_s = triad["triad_gb_s"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    md = [
        f"`benches/realshape/run` (commit `{commit}`, {a.seconds // 60} min). Random weights of "
        "gpt-oss-20b's exact shape (hidden 2880, 64/8 heads of 64, 32 experts top-4, vocabulary "
        "201,088, sliding 128 / full alternating, YaRN, sinks), exported int4 by onnxruntime-genai "
        "0.18's builder (MatMulNBits, QMoE with 4-bit experts, GroupQueryAttention); the 24-layer "
        "model repeats the 2-layer export's layers with fresh random int4 weights. Both engines "
        "greedy, same folder, same prompts; ours with its defaults (256-token prefill chunks, "
        "continuous batching), genai's generator with batch size c (`genai-batch`) and, for c > 1, "
        "c generators on c threads (`genai-threads`); the better genai figure is the peer.",
        "",
        f"Memory bandwidth (STREAM triad, {triad['threads']} threads, best of 10): **{gb_s:.1f} GB/s**. "
        f"Decode bound = bandwidth / bytes one decode step reads (`bound.py`, from the model's own "
        f"tensors, at {a.prompt_len + a.new_tokens // 2} tokens of context).",
        "",
    ]
    results = {"triad": triad, "models": {}}
    for m in a.models.split(","):
        d = os.path.join(a.out, m)
        if not os.path.isdir(d):
            continue
        with open(os.path.join(d, "file.json")) as f:
            file_bytes = json.load(f)["file_bytes"]
        g, o = lines(os.path.join(d, "genai.jsonl")), lines(os.path.join(d, "ours.jsonl"))
        gp, op = lines(os.path.join(d, "genai_prefill.jsonl")), lines(os.path.join(d, "ours_prefill.jsonl"))
        g_load = (pick(g, phase="load") or [{}])[0]
        o_load = (pick(o, phase="load") or [{}])[0]
        # Greedy ids, token for token.
        gg = {r["index"]: r["tokens"] for r in pick(g, phase="greedy")}
        og_ = {r["index"]: r["tokens"] for r in pick(o, phase="greedy")}
        compared = sorted(set(gg) & set(og_))
        equal = [i for i in compared if gg[i] == og_[i]]
        mismatch = []
        for i in compared:
            if gg[i] != og_[i]:
                k = next((j for j, (x, y) in enumerate(zip(gg[i], og_[i])) if x != y), min(len(gg[i]), len(og_[i])))
                mismatch.append(f"prompt {i} from token {k}")
        dec_g1 = (pick(g, engine="genai-batch", concurrency=1) or [{}])[0].get("decode_tokens_per_s")
        dec_o1 = (pick(o, engine="ours", concurrency=1) or [{}])[0].get("decode_tokens_per_s")
        tot_g4 = max([r["tokens_per_s"] for r in g if r.get("concurrency") == 4 and "tokens_per_s" in r] or [0]) or None
        tot_g4_batch = (pick(g, engine="genai-batch", concurrency=4) or [{}])[0].get("tokens_per_s")
        tot_g4_thr = (pick(g, engine="genai-threads", concurrency=4) or [{}])[0].get("tokens_per_s")
        tot_o4 = (pick(o, engine="ours", concurrency=4) or [{}])[0].get("tokens_per_s")
        pre_g = (pick(gp, engine="genai-batch", concurrency=1) or [{}])[0].get("prefill_tokens_per_s")
        pre_o = (pick(op, engine="ours", concurrency=1) or [{}])[0].get("prefill_tokens_per_s")
        ctx = a.prompt_len + a.new_tokens // 2
        step_bytes, parts = decode_bytes(os.path.join(a.cache, m), ctx)
        bound_tok_s = gb_s * 1e9 / step_bytes
        r = {
            "file_bytes": file_bytes,
            "load_s": {"ours": o_load.get("load_s"), "genai": g_load.get("load_s")},
            "rss_bytes": {"ours": o_load.get("rss_bytes"), "genai": g_load.get("rss_bytes")},
            "greedy": {"compared": len(compared), "equal": len(equal), "mismatch": mismatch,
                       "tokens_each": a.new_tokens},
            "prefill_tokens_per_s": {"ours": pre_o, "genai": pre_g},
            "decode_1_tokens_per_s": {"ours": dec_o1, "genai": dec_g1},
            "total_4_tokens_per_s": {"ours": tot_o4, "genai_batch": tot_g4_batch, "genai_threads": tot_g4_thr},
            "decode_bytes_per_token": step_bytes,
            "decode_bytes_parts": parts,
            "bound_tokens_per_s": bound_tok_s,
            "ratios": {
                "decode_1": ratio(dec_o1, dec_g1),
                "total_4": ratio(tot_o4, tot_g4),
                "prefill": ratio(pre_o, pre_g),
                "bound_fraction": ratio(dec_o1, bound_tok_s),
                "genai_bound_fraction": ratio(dec_g1, bound_tok_s),
                "rss_over_file_ours": ratio(o_load.get("rss_bytes"), file_bytes),
                "rss_over_file_genai": ratio(g_load.get("rss_bytes"), file_bytes),
            },
        }
        results["models"][m] = r
        rt = r["ratios"]
        md += [
            f"### {m}: {file_bytes / 1e9:.2f} GB of model files",
            "",
            "| | ours | onnxruntime-genai | ours / genai |",
            "|---|---:|---:|---:|",
            f"| load, s | {fmt(o_load.get('load_s'))} | {fmt(g_load.get('load_s'))} | {fmt(ratio(o_load.get('load_s'), g_load.get('load_s')))}x |",
            f"| resident after load, GB (÷ file size) | {fmt((o_load.get('rss_bytes') or 0) / 1e9)} ({fmt(rt['rss_over_file_ours'])}) | "
            f"{fmt((g_load.get('rss_bytes') or 0) / 1e9)} ({fmt(rt['rss_over_file_genai'])}) | |",
            f"| prefill, {a.prefill_len}-token prompt, tokens/s | {fmt(pre_o)} | {fmt(pre_g)} | **{fmt(rt['prefill'])}x** |",
            f"| decode, 1 sequence, tokens/s | {fmt(dec_o1)} | {fmt(dec_g1)} | **{fmt(rt['decode_1'])}x** |",
            f"| total, 4 sequences, tokens/s | {fmt(tot_o4)} | {fmt(tot_g4)} (batch {fmt(tot_g4_batch)}, threads {fmt(tot_g4_thr)}) | **{fmt(rt['total_4'])}x** |",
            f"| decode, fraction of the bound ({fmt(bound_tok_s)} tokens/s: {step_bytes / 1e9:.3f} GB per step) | "
            f"**{fmt(rt['bound_fraction'])}** | {fmt(rt['genai_bound_fraction'])} | |",
            "",
            f"Greedy ids: {len(equal)} of {len(compared)} prompts × {a.new_tokens} tokens equal to genai's"
            + (f" (differ: {', '.join(mismatch)})" if mismatch else "") + ".",
            "",
        ]
    md += ["Targets (issue 18): decode ≥ 1.0x genai at one sequence, total ≥ 1.3x at 4, ≥ 60% of the "
           "bound at one sequence, resident ≤ 1.1x the file size.", ""]
    with open(os.path.join(a.out, "summary.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
