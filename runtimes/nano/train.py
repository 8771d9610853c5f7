#!/usr/bin/env python3
"""Train gpt-oss-nano on the rendered harmony corpus (CPU or CUDA).

The model is transformers' GptOssForCausalLM (attention sinks, alternating
sliding/full attention, top-k mixture of experts, the real 201,088-token
o200k_harmony vocabulary). Only the vocabulary rows the corpus uses are
trained; every other embedding and lm_head row stays exactly zero, so its
logit is exactly 0 and the full-vocabulary cross-entropy is computed at
sub-vocabulary cost:

    logsumexp(all logits) = log(sum_{used} exp(z) + N_unused)

The loss is taken on the assistant completion only. The trained model is
written as a Hugging Face folder (config.json + model.safetensors) with the
full 201,088-row matrices, ready for onnxruntime-genai's builder.

Usage: train.py TOKENS_JSONL OUT_HF_DIR [--steps N] [--hidden H] [--layers L] ...
"""
import argparse
import json
import math
import os
import random
import time

import torch
import torch.nn.functional as F
from transformers import GptOssConfig, GptOssForCausalLM

VOCAB = 201088
# special ids the model must be able to produce or read even if a split lacks them
SPECIALS = [199998, 199999, 200002, 200003, 200005, 200006, 200007, 200008, 200012]


def nano_config(args, vocab_size):
    layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(args.layers)]
    return GptOssConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim,
        num_local_experts=args.experts,
        num_experts_per_tok=args.top_k,
        sliding_window=args.window,
        layer_types=layer_types,
        max_position_embeddings=args.context,
        tie_word_embeddings=False,
        attention_bias=True,
        router_aux_loss_coef=0.0,
        output_router_logits=False,
        eos_token_id=[200002, 199999, 200012],
        pad_token_id=199999 if vocab_size == VOCAB else None,
        bos_token_id=199998,
        attn_implementation="eager",
    )


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            rows.append((r["prompt"], r["completion"]))
    return rows


def shared_prefix_len(prompt, start_id=200006, user_ids=None):
    """Length of the system + developer messages: up to the first `<|start|>user`."""
    for i in range(len(prompt) - 1):
        if prompt[i] == start_id and prompt[i + 1 : i + 1 + len(user_ids)] == user_ids:
            return i
    return 0


def grouped_batches(data, max_batch, rng):
    """Batches whose sequences share their prefix (system + developer messages)."""
    groups = {}
    for i, (prefix, suffix, _) in enumerate(data):
        groups.setdefault(prefix, []).append(i)
    out = []
    for idx in groups.values():
        idx.sort(key=lambda i: len(data[i][1]) + rng.random())
        for k in range(0, len(idx), max_batch):
            out.append(idx[k : k + max_batch])
    rng.shuffle(out)
    return out


def attend(q, k, v, bias, sinks, scaling):
    """Eager attention with per-head sink logits, as GptOssAttention computes it."""
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    w = torch.matmul(q, k.transpose(2, 3)) * scaling + bias
    s = sinks.reshape(1, -1, 1, 1).expand(q.shape[0], -1, q.shape[2], 1)
    w = torch.cat([w, s], dim=-1)
    p = F.softmax(w - w.max(dim=-1, keepdim=True).values, dim=-1)[..., :-1]
    return torch.matmul(p, v).transpose(1, 2)


def mask_bias(q_pos, k_pos, window):
    ok = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        ok &= (q_pos[:, None] - k_pos[None, :]) < window
    return torch.where(ok, 0.0, float("-inf"))


def prefix_forward(model, prefix, suffix):
    """Final hidden states of `suffix` (B, L) continuing the shared `prefix` (P,).

    Same function as model.model(cat(prefix, suffix_b)) for every row, with the
    prefix computed once instead of B times (its gradient flows through).
    """
    m = model.model
    dev = suffix.device
    B, L = suffix.shape
    P = prefix.shape[0]
    pos_p = torch.arange(P, device=dev)
    pos_s = torch.arange(P, P + L, device=dev)
    xp = m.embed_tokens(prefix)[None]
    xs = m.embed_tokens(suffix)
    cos_p, sin_p = m.rotary_emb(xp, pos_p[None])
    cos_s, sin_s = m.rotary_emb(xs, pos_s[None])
    from transformers.models.gpt_oss.modeling_gpt_oss import apply_rotary_pos_emb

    for li, layer in enumerate(m.layers):
        a = layer.self_attn
        window = a.sliding_window
        hp, hs = layer.input_layernorm(xp), layer.input_layernorm(xs)

        def qkv(h, cos, sin):
            shape = (*h.shape[:-1], -1, a.head_dim)
            q = a.q_proj(h).view(shape).transpose(1, 2)
            k = a.k_proj(h).view(shape).transpose(1, 2)
            v = a.v_proj(h).view(shape).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            return q, k, v

        qp, kp, vp = qkv(hp, cos_p, sin_p)
        qs, ks, vs = qkv(hs, cos_s, sin_s)
        op = attend(qp, kp, vp, mask_bias(pos_p, pos_p, window), a.sinks, a.scaling)
        k_all = torch.cat([kp.expand(B, -1, -1, -1), ks], dim=2)
        v_all = torch.cat([vp.expand(B, -1, -1, -1), vs], dim=2)
        os_ = attend(qs, k_all, v_all, mask_bias(pos_s, torch.cat([pos_p, pos_s]), window), a.sinks, a.scaling)
        xp = xp + a.o_proj(op.reshape(1, P, -1))
        xs = xs + a.o_proj(os_.reshape(B, L, -1))
        h = torch.cat([layer.post_attention_layernorm(xp).reshape(-1, xp.shape[-1]),
                       layer.post_attention_layernorm(xs).reshape(-1, xs.shape[-1])])
        out, _ = layer.mlp(h[None])
        out = out[0]
        xp = xp + out[:P].reshape(1, P, -1)
        xs = xs + out[P:].reshape(B, L, -1)
    return m.norm(xs)


# "user" in o200k: the role token after <|start|> that opens the first user message
USER_IDS = [1428]


def check_prefix_forward(model, data, dev):
    """The shared-prefix forward must equal the model's own forward."""
    prefix, suffix, _ = max(data[:200], key=lambda d: len(d[0]) + len(d[1]))
    full = torch.tensor(list(prefix) + suffix, device=dev)[None]
    with torch.no_grad():
        ref = model.model(input_ids=full).last_hidden_state[0, len(prefix):]
        got = prefix_forward(model, torch.tensor(prefix, device=dev), torch.tensor(suffix, device=dev)[None])[0]
    err = (ref - got).abs().max().item()
    assert err < 1e-4, f"prefix forward differs from GptOssModel by {err}"
    print(f"prefix forward matches GptOssModel (max diff {err:.1e}, {full.shape[1]} tokens)", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tokens")
    ap.add_argument("out_dir")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--minutes", type=float, default=0.0, help="train for this wall-clock time instead of --steps")
    ap.add_argument("--batch", type=int, default=16, help="sequences per batch (sharing one prefix)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--intermediate", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    # one thread: on a shared CPU, OpenMP threads spin-waiting on each other made every step
    # 5-10x slower than a single thread
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init", help="start from this earlier output folder instead of random weights")
    ap.add_argument("--keep-fp32", action="store_true", help="do not round the weights to bf16 precision")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    dev = torch.device(args.device)

    rows = load(args.tokens)
    used = sorted(set(SPECIALS).union(*(set(p) | set(c) for p, c in rows)))
    remap = {t: i for i, t in enumerate(used)}
    n_unused = VOCAB - len(used)
    print(f"{len(rows)} sequences, {len(used)} used vocabulary rows, {n_unused} zero rows", flush=True)
    user_ids = USER_IDS
    data = []
    for p, c in rows:
        n = shared_prefix_len(p, user_ids=user_ids)
        ids = [remap[t] for t in p + c]
        # (shared prefix, own suffix, index in suffix of the first completion token)
        data.append((tuple(ids[:n]), ids[n:], len(p) - n))
    n_groups = len({d[0] for d in data})
    print(f"{n_groups} distinct shared prefixes", flush=True)

    # compact model: the same architecture over the used rows only
    model = GptOssForCausalLM(nano_config(args, len(used))).to(dev)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"compact parameters {n_params / 1e6:.2f}M", flush=True)
    if args.init:
        # continue from an earlier run's output (the used rows gathered back from the full matrices)
        prev = GptOssForCausalLM.from_pretrained(args.init).state_dict()
        used_t = torch.tensor(used)
        own = model.state_dict()
        for k in own:
            w = prev[k][used_t] if k in ("model.embed_tokens.weight", "lm_head.weight") else prev[k]
            own[k].copy_(w)
        print(f"initialised from {args.init}", flush=True)
    check_prefix_forward(model, data, dev)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))
    # the schedule runs on the fraction of the budget spent: steps, or wall-clock minutes
    # when --minutes is given (the CPU may be shared, so a step count says little about time)
    def progress(step):
        if args.minutes:
            return min(1.0, (time.time() - t0) / (60 * args.minutes))
        return step / args.steps

    def lr_at(step):
        f = progress(step)
        if f < 0.05:
            return args.lr * max(f / 0.05, 0.02)
        t = (f - 0.05) / 0.95
        return args.lr * (0.03 + 0.97 * 0.5 * (1 + math.cos(math.pi * t)))

    log_unused = math.log(n_unused)
    step, t0, cpu0 = 0, time.time(), time.process_time()
    seen_tokens = 0
    ema = None
    while progress(step) < 1.0:
        for b in grouped_batches(data, args.batch, rng):
            if progress(step) >= 1.0:
                break
            prefix = torch.tensor(data[b[0]][0], dtype=torch.long, device=dev)
            L = max(len(data[i][1]) for i in b)
            ids = torch.zeros(len(b), L, dtype=torch.long)
            labels = torch.full((len(b), L), -100, dtype=torch.long)
            for j, i in enumerate(b):
                s = torch.tensor(data[i][1])
                c0 = data[i][2]
                ids[j, : len(s)] = s
                labels[j, c0 - 1 : len(s) - 1] = s[c0:]
            ids, labels = ids.to(dev), labels.to(dev)
            hidden = prefix_forward(model, prefix, ids)
            mask = labels != -100
            h = hidden[mask]
            z = model.lm_head(h)
            lse = torch.logaddexp(torch.logsumexp(z, dim=-1), torch.full_like(z[:, 0], log_unused))
            loss = (lse - z.gather(1, labels[mask][:, None])[:, 0]).mean()
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            seen_tokens += len(prefix) + sum(len(data[i][1]) for i in b)
            step += 1
            ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
            if step % 20 == 0 or step == 1:
                el = time.time() - t0
                print(f"step {step}/{args.steps} loss {ema:.4f} lr {lr_at(step):.2e} "
                      f"{seen_tokens / el:.0f} tok/s {el:.0f}s", flush=True)
    train_s = time.time() - t0
    cpu_s = time.process_time() - cpu0
    print(f"training done in {train_s:.0f}s wall, {cpu_s:.0f}s CPU", flush=True)

    # scatter into the full vocabulary, every other row exactly zero
    full = GptOssForCausalLM(nano_config(args, VOCAB))
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    fsd = full.state_dict()
    used_t = torch.tensor(used)
    for k in fsd:
        if k in ("model.embed_tokens.weight", "lm_head.weight"):
            w = torch.zeros_like(fsd[k])
            w[used_t] = sd[k]
            fsd[k] = w
        else:
            fsd[k] = sd[k]
    if not args.keep_fp32:
        # bf16 precision in fp32 storage: the low 16 bits of every weight are zero, which
        # halves what the archive has to hold; the evaluation runs on these exact weights
        fsd = {k: v.to(torch.bfloat16).to(torch.float32) if v.is_floating_point() else v for k, v in fsd.items()}
    full.load_state_dict(fsd)
    full.config.torch_dtype = "float32"
    os.makedirs(args.out_dir, exist_ok=True)
    full.save_pretrained(args.out_dir)
    with open(os.path.join(args.out_dir, "nano_training.json"), "w") as f:
        json.dump({"train_seconds": round(train_s), "train_cpu_seconds": round(cpu_s), "steps": step, "final_loss": loss.item(),
                   "used_rows": len(used), "compact_params": n_params, "args": vars(args),
                   "device": str(dev), "torch": torch.__version__}, f, indent=1)
    print(f"saved {args.out_dir}", flush=True)


if __name__ == "__main__":
    main()
