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

Long contexts (`--long TOKENS_JSONL`, gen_corpus.py's train_long split): groups of examples
sharing a long text of up to ~12,000 tokens are interleaved with the short batches. A group's
shared prefix (the longest common prefix of its prompts) is run without gradient, in chunks of
queries (a sliding layer only keeps its last `window` keys), and the examples' own tokens are
trained attending to its keys and values. Words of the long texts that the short corpus never
uses all map to one row kept at exactly zero: that is what the exported model (whose unused rows
are zero) sees for any text it was not taught.

Usage: train.py TOKENS_JSONL OUT_HF_DIR [--steps N] [--hidden H] [--layers L] [--long LONG_JSONL] ...
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


def load(path, with_group=False):
    rows = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            rows.append((r["prompt"], r["completion"], r.get("group")) if with_group else (r["prompt"], r["completion"]))
    return rows


def common_prefix_len(seqs):
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return n


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


def qkv(a, h, cos, sin):
    from transformers.models.gpt_oss.modeling_gpt_oss import apply_rotary_pos_emb

    shape = (*h.shape[:-1], -1, a.head_dim)
    q = a.q_proj(h).view(shape).transpose(1, 2)
    k = a.k_proj(h).view(shape).transpose(1, 2)
    v = a.v_proj(h).view(shape).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return q, k, v


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
    for li, layer in enumerate(m.layers):
        a = layer.self_attn
        window = a.sliding_window
        hp, hs = layer.input_layernorm(xp), layer.input_layernorm(xs)
        qp, kp, vp = qkv(a, hp, cos_p, sin_p)
        qs, ks, vs = qkv(a, hs, cos_s, sin_s)
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


@torch.no_grad()
def prefix_cache(model, prefix, chunk=512):
    """Per layer, the keys and values (after rotary) of `prefix` (P,) that later tokens attend
    to: all P for a full layer, the last `window` for a sliding one. No gradient; queries are
    taken `chunk` at a time so memory stays O(chunk x P)."""
    m = model.model
    P = prefix.shape[0]
    pos = torch.arange(P, device=prefix.device)
    x = m.embed_tokens(prefix)[None]
    cos, sin = m.rotary_emb(x, pos[None])
    cache = []
    for layer in m.layers:
        a = layer.self_attn
        w = a.sliding_window
        q, k, v = qkv(a, layer.input_layernorm(x), cos, sin)
        out = torch.empty(1, P, q.shape[1], q.shape[3], device=x.device)
        for s0 in range(0, P, chunk):
            s1 = min(P, s0 + chunk)
            k0 = 0 if w is None else max(0, s0 - w + 1)
            out[:, s0:s1] = attend(q[:, :, s0:s1], k[:, :, k0:s1], v[:, :, k0:s1],
                                   mask_bias(pos[s0:s1], pos[k0:s1], w), a.sinks, a.scaling)
        x = x + a.o_proj(out.reshape(1, P, -1))
        mo, _ = layer.mlp(layer.post_attention_layernorm(x))
        x = x + mo
        keep = P if w is None else min(P, w)
        cache.append((k[:, :, P - keep:], v[:, :, P - keep:]))
    return cache


def cached_forward(model, cache, P, suffix):
    """Final hidden states of `suffix` (B, L) continuing a prefix of P tokens whose keys and
    values are `cache` (prefix_cache): the same function as prefix_forward's, the prefix's
    side held fixed."""
    m = model.model
    B, L = suffix.shape
    pos_s = torch.arange(P, P + L, device=suffix.device)
    xs = m.embed_tokens(suffix)
    cos, sin = m.rotary_emb(xs, pos_s[None])
    for layer, (kp, vp) in zip(m.layers, cache):
        a = layer.self_attn
        qs, ks, vs = qkv(a, layer.input_layernorm(xs), cos, sin)
        k_pos = torch.cat([torch.arange(P - kp.shape[2], P, device=suffix.device), pos_s])
        k_all = torch.cat([kp.expand(B, -1, -1, -1), ks], dim=2)
        v_all = torch.cat([vp.expand(B, -1, -1, -1), vs], dim=2)
        o = attend(qs, k_all, v_all, mask_bias(pos_s, k_pos, a.sliding_window), a.sinks, a.scaling)
        xs = xs + a.o_proj(o.reshape(B, L, -1))
        mo, _ = layer.mlp(layer.post_attention_layernorm(xs))
        xs = xs + mo
    return m.norm(xs)


def check_cached_forward(model, long_data, dev):
    """The cached (chunked, windowed) path must equal prefix_forward on a long group."""
    prefix, suffix, _ = min((d for d in long_data if len(d[0]) > 1200), key=lambda d: len(d[0]))
    p = torch.tensor(prefix, device=dev)
    s = torch.tensor(suffix, device=dev)[None]
    with torch.no_grad():
        ref = prefix_forward(model, p, s)
        got = cached_forward(model, prefix_cache(model, p, chunk=256), len(prefix), s)
    err = (ref - got).abs().max().item()
    assert err < 1e-4, f"cached forward differs from prefix_forward by {err}"
    print(f"cached forward matches prefix_forward (max diff {err:.1e}, prefix {len(prefix)} tokens)", flush=True)


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
    ap.add_argument("--long", help="also train on this rendered long-context split (gen_corpus.py --long-groups)")
    ap.add_argument("--long-every", type=int, default=1, help="short batches per long batch")
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
    # long texts: their words outside `used` all map to one extra row, kept at zero
    zero_row = len(used)
    long_batches = []
    if args.long:
        groups = {}
        for p, c, g in load(args.long, with_group=True):
            assert all(t in remap for t in c), "a long-context completion uses a token the short corpus lacks"
            groups.setdefault(g, []).append(([remap.get(t, zero_row) for t in p], [remap[t] for t in c]))
        long_data = []
        for rows_g in groups.values():
            n = common_prefix_len([p for p, _ in rows_g])
            items = [(p[n:] + c, len(p) - n) for p, c in rows_g]
            for k in range(0, len(items), args.batch):
                long_batches.append((tuple(rows_g[0][0][:n]), items[k : k + args.batch]))
            long_data += [(tuple(rows_g[0][0][:n]), s_, c0) for s_, c0 in items]
        lens = sorted(len(b[0]) for b in long_batches)
        unknown = sum(t == zero_row for b in long_batches for t in b[0])
        print(f"long: {len(groups)} groups, {len(long_batches)} batches, prefixes {lens[0]}..{lens[-1]} tokens "
              f"(median {lens[len(lens) // 2]}), {unknown / sum(lens):.0%} of their tokens on the zero row", flush=True)
    n_rows = len(used) + (1 if long_batches else 0)

    # compact model: the same architecture over the used rows only (plus the zero row)
    model = GptOssForCausalLM(nano_config(args, n_rows)).to(dev)
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
            own[k][: w.shape[0]].copy_(w)
        print(f"initialised from {args.init}", flush=True)
    def zero_the_zero_row():
        if long_batches:
            with torch.no_grad():
                model.model.embed_tokens.weight[zero_row].zero_()
                model.lm_head.weight[zero_row].zero_()

    zero_the_zero_row()
    check_prefix_forward(model, data, dev)
    if long_batches:
        check_cached_forward(model, long_data, dev)
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
    def batch_tensors(items):
        """(ids, labels) of a batch of (suffix, index of its first completion token)."""
        L = max(len(sfx) for sfx, _ in items)
        ids = torch.zeros(len(items), L, dtype=torch.long)
        labels = torch.full((len(items), L), -100, dtype=torch.long)
        for j, (sfx, c0) in enumerate(items):
            t = torch.tensor(sfx)
            ids[j, : len(t)] = t
            labels[j, c0 - 1 : len(t) - 1] = t[c0:]
        return ids.to(dev), labels.to(dev)

    def train_step(hidden, labels):
        nonlocal step, ema
        mask = labels != -100
        z = model.lm_head(hidden[mask])[:, : len(used)]
        lse = torch.logaddexp(torch.logsumexp(z, dim=-1), torch.full_like(z[:, 0], log_unused))
        loss = (lse - z.gather(1, labels[mask][:, None])[:, 0]).mean()
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        zero_the_zero_row()
        step += 1
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        return loss

    long_queue, long_steps, long_tokens = [], 0, 0
    while progress(step) < 1.0:
        for b in grouped_batches(data, args.batch, rng):
            if progress(step) >= 1.0:
                break
            prefix = torch.tensor(data[b[0]][0], dtype=torch.long, device=dev)
            ids, labels = batch_tensors([(data[i][1], data[i][2]) for i in b])
            loss = train_step(prefix_forward(model, prefix, ids), labels)
            seen_tokens += len(prefix) + sum(len(data[i][1]) for i in b)
            if long_batches and step % args.long_every == 0 and progress(step) < 1.0:
                if not long_queue:
                    long_queue = list(long_batches)
                    rng.shuffle(long_queue)
                lp, items = long_queue.pop()
                lp = torch.tensor(lp, dtype=torch.long, device=dev)
                ids, labels = batch_tensors(items)
                cache = prefix_cache(model, lp)
                loss = train_step(cached_forward(model, cache, len(lp), ids), labels)
                long_steps += 1
                long_tokens += len(lp)
            if step % 20 == 0 or step == 1:
                el = time.time() - t0
                print(f"step {step}/{args.steps} loss {ema:.4f} lr {lr_at(step):.2e} "
                      f"{seen_tokens / el:.0f} tok/s {el:.0f}s"
                      + (f" long {long_steps} steps, {long_tokens} prefix tokens" if long_batches else ""), flush=True)
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
            w[used_t] = sd[k][: len(used)]
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
                   "long_steps": long_steps, "long_prefix_tokens": long_tokens,
                   "used_rows": len(used), "compact_params": n_params, "args": vars(args),
                   "device": str(dev), "torch": torch.__version__}, f, indent=1)
    print(f"saved {args.out_dir}", flush=True)


if __name__ == "__main__":
    main()
