#!/usr/bin/env python3
"""Prefix caching and cache-aware routing, measured (issue 19): a multi-turn chat workload over
two gpt-oss-servers behind gpt-oss-lb, in three set-ups measured in one run, and the same
conversations replayed on onnxruntime-genai's generator (which has no cross-request reuse).

Workload: `--conversations` (8) conversations at once, `--turns` (10) turns each, every
conversation opening with the same system prompt of about `--system-tokens` (4,000) tokens
(rules, as coding agents send), then its own questions; each turn resends the whole history
with the previous answers, as the OpenAI SDK's chat clients do. Every request is streamed
(`stream_options.include_usage`), greedy, at most `--max-tokens` (32) tokens. The model is the
embedded gpt-oss-nano, the servers run with their default flags but for the cache's size, and
the backends are registered through the LB's admin API the default way.

Set-ups:
  cache off      `--prefix-cache-mib 0`, LB `least_outstanding`
  cache on       default flags (`--prefix-cache-mib 1024`), LB `least_outstanding` (routing
                 that does not know about the cache)
  cache-aware    default flags, LB default (`cache_aware`)
  genai          onnxruntime-genai 0.18's Generator on the same model folder, the cache-aware
                 run's requests rendered by the project's renderer, one turn after another,
                 the first `--genai-conversations` conversations (its prefill of ~4,500 tokens takes
                 about 10 s here, so all 80 turns would take a quarter of an hour)

Time to first token (TTFT) is measured by the client, from sending the request to the first
chunk that carries text (reasoning or content): queueing included, as a user sees it.
Throughput is the tokens of every turn (prompt + completion, and completion alone) over the
set-up's wall time. Writes OUT/results.json, OUT/summary.md and OUT/turns.jsonl; exits 1 when
something could not be measured.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

import openai

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODEL = "gpt-oss-20b"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url, proc, what, timeout=300):
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return json.load(r)
        except Exception:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited")
        if time.time() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout} s")
        time.sleep(0.2)


class Server:
    """A gpt-oss-server on a free loopback port serving the embedded gpt-oss-nano."""

    def __init__(self, work, name, flags):
        env = dict(os.environ, XDG_CACHE_HOME=os.path.join(work, "cache"),
                   XDG_DATA_HOME=os.path.join(work, "data"), RUST_LOG="warn")
        self.log = open(os.path.join(work, f"{name}.log"), "w")
        self.proc = subprocess.Popen(
            [os.path.join(ROOT, "target/release/gpt-oss-server"), "--host", "127.0.0.1", "--port", "0",
             "--device-map", "cpu", "--responses-store", ":memory:", *flags],
            stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL, env=env, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            raise RuntimeError(f"{name}: unexpected first line {line!r}")
        self.url = line.removeprefix("listening on ")
        wait(self.url + "/health", self.proc, name)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Lb:
    """gpt-oss-lb on a free loopback port; backends registered through its admin API."""

    def __init__(self, work, name, yaml):
        d = os.path.join(work, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "lb.yaml"), "w") as f:
            f.write(yaml)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(d, "lb.log"), "w")
        self.proc = subprocess.Popen(
            [os.path.join(ROOT, "target/release/gpt-oss-lb"), "--config", os.path.join(d, "lb.yaml"),
             "--host", "127.0.0.1", "--port", str(self.port), "--state-file", os.path.join(d, "state.json"),
             "--upgrade-sock", os.path.join(d, "up.sock"), "--pid-file", os.path.join(d, "lb.pid")],
            stdout=subprocess.DEVNULL, stderr=self.log, stdin=subprocess.DEVNULL,
            env=dict(os.environ, XDG_DATA_HOME=os.path.join(d, "data")))

    def register(self, name, url):
        body = json.dumps({"name": name, "url": url, "models": [MODEL]}).encode()
        deadline = time.time() + 30
        while True:
            req = urllib.request.Request(self.url + "/backends/register", data=body,
                                         headers={"Content-Type": "application/json"}, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    assert r.status == 201
                    return
            except urllib.error.HTTPError:
                raise
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("the LB did not start")
                time.sleep(0.1)

    def wait_healthy(self, names):
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/status", timeout=5) as r:
                    st = json.load(r)
                if all(any(b["name"] == n and b["healthy"] for b in st["backends"]) for n in names):
                    return
            except Exception:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"backends {names} not healthy")

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()


def system_prompt(rules):
    return "You are a helpful assistant. Answer in one short sentence.\n" + "\n".join(
        f"Rule {i}: when the user asks about topic number {i}, answer briefly, name the topic, "
        f"and never mention rule {i + 1} or any rule after it." for i in range(rules))


def calibrate(url, target):
    """The number of rules whose system prompt is about `target` tokens (measured by the server's
    own prompt_tokens)."""
    c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)

    def tokens(rules):
        r = c.chat.completions.create(model=MODEL, max_tokens=1, temperature=0, messages=[
            {"role": "system", "content": system_prompt(rules)}, {"role": "user", "content": "Hi."}])
        return r.usage.prompt_tokens

    base, ten = tokens(0), tokens(10)
    per_rule = (ten - base) / 10
    rules = max(1, round(target / per_rule))
    return rules, tokens(rules) - base


def question(conv, turn):
    return f"Conversation {conv}, question {turn + 1}: tell me about topic number {(conv * 17 + turn * 5) % 150}."


def run_conversation(client, conv, turns, system, max_tokens, records, lock):
    messages = [{"role": "system", "content": system}]
    for t in range(turns):
        messages.append({"role": "user", "content": question(conv, t)})
        sent = [dict(m) for m in messages]
        start = time.perf_counter()
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, temperature=0, max_tokens=max_tokens, stream=True,
            stream_options={"include_usage": True})
        backend = raw.headers.get("x-gpt-oss-lb-backend")
        first, text, usage = None, [], None
        for chunk in raw.parse():
            if chunk.choices:
                d = chunk.choices[0].delta
                piece = (d.content or "") + (getattr(d, "reasoning_content", None) or "")
                if piece and first is None:
                    first = time.perf_counter() - start
                text.append(d.content or "")
            if chunk.usage:
                usage = chunk.usage
        total = time.perf_counter() - start
        answer = "".join(text)
        cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
        with lock:
            records.append({"conversation": conv, "turn": t + 1, "ttft_s": first, "latency_s": total,
                            "prompt_tokens": usage.prompt_tokens, "cached_tokens": cached,
                            "completion_tokens": usage.completion_tokens, "backend": backend,
                            "answer": answer, "messages": sent})
        messages.append({"role": "assistant", "content": answer})


def measure(work, name, server_flags, lb_yaml, args, system):
    servers = {n: Server(work, f"{name}-{n}", server_flags) for n in ("a", "b")}
    lb = Lb(work, f"lb-{name}", lb_yaml)
    try:
        for n, s in servers.items():
            lb.register(n, s.url)
        lb.wait_healthy(list(servers))
        client = openai.OpenAI(base_url=lb.url + "/v1", api_key="unused", max_retries=0, timeout=900)
        records, lock = [], threading.Lock()
        start = time.perf_counter()
        threads = [threading.Thread(target=run_conversation,
                                    args=(client, c, args.turns, system, args.max_tokens, records, lock))
                   for c in range(args.conversations)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    finally:
        lb.stop()
        for s in servers.values():
            s.stop()
    want = args.conversations * args.turns
    if len(records) != want or any(r["ttft_s"] is None for r in records):
        raise RuntimeError(f"{name}: {len(records)} of {want} turns measured, or a turn without text")
    return {"name": name, "wall_s": wall, "turns": sorted(records, key=lambda r: (r["conversation"], r["turn"]))}


def summarize(m):
    t = m["turns"]
    first = [r["ttft_s"] for r in t if r["turn"] == 1]
    later = [r["ttft_s"] for r in t if r["turn"] > 1]
    prompt = sum(r["prompt_tokens"] for r in t)
    completion = sum(r["completion_tokens"] for r in t)
    backends = {}
    for r in t:
        if r.get("backend"):
            backends[r["backend"]] = backends.get(r["backend"], 0) + 1
    moved = sum(1 for a, b in zip(t, t[1:]) if a["conversation"] == b["conversation"] and a.get("backend") != b.get("backend"))
    return {
        "name": m["name"],
        "ttft_turn1_median_s": statistics.median(first),
        "ttft_later_median_s": statistics.median(later),
        "ttft_later_p90_s": sorted(later)[max(0, int(len(later) * 0.9) - 1)],
        "wall_s": m["wall_s"],
        "tokens_per_s": (prompt + completion) / m["wall_s"],
        "completion_tokens_per_s": completion / m["wall_s"],
        "prompt_tokens": prompt,
        "cached_tokens": sum(r["cached_tokens"] for r in t),
        "cached_share_later": sum(r["cached_tokens"] for r in t if r["turn"] > 1)
        / max(1, sum(r["prompt_tokens"] for r in t if r["turn"] > 1)),
        "backends": backends,
        "conversation_moves": moved,
    }


def run_genai(work, args, cache_aware, model_dir):
    """Replays the first `--genai-conversations` conversations of the cache-aware run on genai."""
    keep = [r for r in cache_aware["turns"] if r["conversation"] < args.genai_conversations]
    requests = os.path.join(work, "genai_requests.jsonl")
    with open(requests, "w") as f:
        for r in keep:
            # the server's system message carries today's date
            f.write(json.dumps({"id": f"{r['conversation']}-{r['turn']}", "date": time.strftime("%Y-%m-%d", time.gmtime()),
                                "request": {"model": MODEL, "messages": r["messages"]}}) + "\n")
    render = os.path.join(ROOT, "target/release/examples/render_jsonl")
    with open(requests) as fin, open(os.path.join(work, "genai_tokens.jsonl"), "w") as fout:
        subprocess.run([render], stdin=fin, stdout=fout, check=True)
    out = subprocess.run(
        [os.path.join(ROOT, ".venv-tools/bin/python"), os.path.join(ROOT, "benches/prefix_cache/genai_turns.py"),
         "--model", model_dir, "--tokens", os.path.join(work, "genai_tokens.jsonl"),
         "--max-tokens", str(args.max_tokens), "--threads", str(os.cpu_count())],
        check=True, capture_output=True, text=True)
    rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    by_id = {r["id"]: r for r in rows}
    turns = []
    for r in keep:
        g = by_id[f"{r['conversation']}-{r['turn']}"]
        turns.append({"conversation": r["conversation"], "turn": r["turn"], "ttft_s": g["ttft_s"],
                      "latency_s": g["latency_s"], "prompt_tokens": g["prompt_tokens"],
                      "ours_prompt_tokens": r["prompt_tokens"], "completion_tokens": g["completion_tokens"],
                      "cached_tokens": 0})
    return {"name": "genai", "wall_s": sum(t["latency_s"] for t in turns), "turns": turns}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "benches/out/prefix_cache"))
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--system-tokens", type=int, default=4000)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--genai-conversations", type=int, default=2)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = os.path.join(args.out, "work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)

    probe = Server(work, "calibrate", ["--prefix-cache-mib", "0"])
    try:
        rules, sys_tokens = calibrate(probe.url, args.system_tokens)
    finally:
        probe.stop()
    system = system_prompt(rules)
    nano = [os.path.join(work, "cache", "gpt-oss-front-door", d)
            for d in os.listdir(os.path.join(work, "cache", "gpt-oss-front-door")) if d.startswith("nano-")]
    print(f"system prompt: {rules} rules, {sys_tokens} tokens; model {nano[0]}", file=sys.stderr)

    plain = "health_check: {interval: 300ms, timeout: 300ms}\ndefault_policy: least_outstanding\nbackends: []\n"
    default = "health_check: {interval: 300ms, timeout: 300ms}\nbackends: []\n"
    runs = []
    for name, flags, yaml in (("cache off", ["--prefix-cache-mib", "0"], plain),
                              ("cache on", [], plain),
                              ("cache-aware", [], default)):
        print(f"measuring: {name}", file=sys.stderr)
        runs.append(measure(work, name, flags, yaml, args, system))
        s = summarize(runs[-1])
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()}), file=sys.stderr)
    print("measuring: genai", file=sys.stderr)
    runs.append(run_genai(work, args, runs[2], nano[0]))

    with open(os.path.join(args.out, "turns.jsonl"), "w") as f:
        for m in runs:
            for t in m["turns"]:
                f.write(json.dumps({"setup": m["name"], **{k: v for k, v in t.items() if k != "messages"}}) + "\n")
    sums = [summarize(m) for m in runs]
    off, on, aware, genai = sums
    # the same conversations, greedy: the same answers with and without the cache
    answers = {name: {(t["conversation"], t["turn"]): t["answer"] for t in m["turns"]} for name, m in
               ((m["name"], m) for m in runs[:3])}
    same = sum(1 for k, v in answers["cache off"].items() if answers["cache-aware"].get(k) == v)
    genai_len_match = all(abs(t["prompt_tokens"] - t["ours_prompt_tokens"]) == 0 for t in runs[3]["turns"])
    ratio_on = off["ttft_later_median_s"] / on["ttft_later_median_s"]
    ratio_aware = off["ttft_later_median_s"] / aware["ttft_later_median_s"]
    ratio_genai = genai["ttft_later_median_s"] / aware["ttft_later_median_s"]
    results = {
        "settings": {"conversations": args.conversations, "turns": args.turns, "system_tokens": sys_tokens,
                     "rules": rules, "max_tokens": args.max_tokens, "backends": 2,
                     "genai_conversations": args.genai_conversations, "cpus": os.cpu_count()},
        "setups": sums,
        "same_answers_off_vs_cache_aware": f"{same}/{len(answers['cache off'])}",
        "genai_prompt_lengths_equal_ours": genai_len_match,
        "ratios": {"ttft_later_off_over_on": ratio_on, "ttft_later_off_over_cache_aware": ratio_aware,
                   "ttft_later_genai_over_cache_aware": ratio_genai,
                   "tokens_per_s_cache_aware_over_off": aware["tokens_per_s"] / off["tokens_per_s"]},
        "goal": {"goal": "time to first token from turn 2 on at least 5x lower than with the cache off "
                         "(cache on, cache-aware routing)", "met": ratio_aware >= 5.0},
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)

    def row(s):
        backends = ", ".join(f"{k} {v}" for k, v in sorted(s["backends"].items())) or "-"
        return (f"| {s['name']} | {s['ttft_turn1_median_s']:.3f} | {s['ttft_later_median_s']:.3f} | "
                f"{s['ttft_later_p90_s']:.3f} | {s['cached_share_later']:.0%} | {s['tokens_per_s']:.0f} | "
                f"{s['completion_tokens_per_s']:.1f} | {s['wall_s']:.1f} | {backends} | {s['conversation_moves']} |")

    lines = [
        f"The embedded gpt-oss-nano on 2 gpt-oss-servers behind gpt-oss-lb (CPU, {os.cpu_count()} cores shared by "
        f"both servers), {args.conversations} conversations at once, {args.turns} turns each, a shared system "
        f"prompt of {sys_tokens} tokens, greedy, at most {args.max_tokens} tokens per answer, streamed; TTFT "
        "measured by the client (queueing included). genai: onnxruntime-genai 0.18's Generator on the same model "
        f"folder with the same requests rendered by the project's renderer, one turn at a time, the first {args.genai_conversations} "
        "conversations (no cross-request reuse: every turn prefills its whole prompt).",
        "",
        "| set-up | TTFT turn 1 median s | TTFT turns 2+ median s | TTFT turns 2+ p90 s | cached share of prompts, turns 2+ "
        "| tokens/s (prompt + completion) | completion tokens/s | wall s | turns per backend | backend changes within a conversation |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ] + [row(s) for s in sums] + [
        "",
        f"- {'MET' if ratio_aware >= 5 else 'MISSED'}: TTFT from turn 2, cache off / cache on with cache-aware "
        f"routing: **{ratio_aware:.1f}x** (target >= 5x)",
        f"- TTFT from turn 2, cache off / cache on (least_outstanding routing): {ratio_on:.1f}x; "
        f"genai / cache-aware: {ratio_genai:.1f}x",
        f"- tokens/s, cache-aware / cache off: {aware['tokens_per_s'] / off['tokens_per_s']:.2f}x",
        f"- greedy answers equal with and without the cache: {same}/{len(answers['cache off'])} turns; genai "
        f"prompts as long as our server's (same renderer): {'yes' if genai_len_match else 'NO'}",
    ]
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
