#!/usr/bin/env python3
"""The memory-bandwidth bound of one decode step (issue 9).

Bytes read per token = active weights (attention, router, top-k of the experts,
one lm_head row set is the whole lm_head: every logit is computed) + the KV cache
read at context length T. Divided by the HBM bandwidth, this is the fastest a
decode step can be; tokens/s measured / (1 / bound) is the fraction reached.
"""
import argparse
import json


def bound(layers, ctx, hbm_gbs, weight_bits=4, kv_bytes=2, hidden=2880, heads=64, kv_heads=8,
          head_dim=64, experts=32, top_k=4, inter=2880, vocab=201088, window=128):
    wb = weight_bits / 8
    attn = hidden * (heads + 2 * kv_heads) * head_dim + heads * head_dim * hidden
    expert = hidden * 2 * inter + inter * hidden
    router = hidden * experts
    per_layer = (attn + router) * wb + top_k * expert * wb
    lm_head = vocab * hidden * wb
    kv = 0
    for i in range(layers):
        t = min(ctx, window) if i % 2 == 0 else ctx
        kv += 2 * kv_heads * head_dim * t * kv_bytes
    total = layers * per_layer + lm_head + kv
    return total, total / (hbm_gbs * 1e9)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=160)
    ap.add_argument("--hbm-gbs", type=float, default=3350.0, help="H100 SXM: 3350 GB/s; H200: 4800")
    ap.add_argument("--measured-tok-s", type=float, default=None)
    a = ap.parse_args()
    total, secs = bound(a.layers, a.ctx, a.hbm_gbs)
    out = {"bytes_per_token": total, "bound_s_per_token": secs, "bound_tok_s": 1 / secs}
    if a.measured_tok_s:
        out["fraction_of_bound"] = a.measured_tok_s / (1 / secs)
    print(json.dumps(out))
