#!/usr/bin/env python3
"""Writes benches/RESULTS.md from what the parts of benches/run left in benches/out/.

    python3 benches/report.py --out benches/RESULTS.md
    python3 benches/report.py --machine-only      # only records benches/out/machine.json

Standard library only. A part that did not run, failed, or left no figures is named in the file
with the reason; the script never prints a figure that is not in a part's output. Exits 1 when
some part is missing or failed.
"""
import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out")
PARTS = ("machine", "proxy", "instructions", "harmony", "runtime", "server", "prefix_cache", "realshape")


def cmd(argv):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (r.stdout or r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- machine


def machine():
    lscpu = dict(line.split(":", 1) for line in cmd(["lscpu"]).splitlines() if ":" in line)
    lscpu = {k.strip(): v.strip() for k, v in lscpu.items()}
    mem = ""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {
        "recorded": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cpu": lscpu.get("Model name", platform.processor()),
        "cpus": lscpu.get("CPU(s)", str(os.cpu_count())),
        "threads_per_core": lscpu.get("Thread(s) per core", ""),
        "hypervisor": lscpu.get("Hypervisor vendor", "none"),
        "caches": ", ".join(f"{k} {lscpu[k]}" for k in ("L1d cache", "L2 cache", "L3 cache") if k in lscpu),
        "memory": mem,
        "uname": cmd(["uname", "-srvmo"]),
        "os": next((l.split("=", 1)[1].strip('"') for l in cmd(["cat", "/etc/os-release"]).splitlines()
                    if l.startswith("PRETTY_NAME=")), ""),
        "loadavg_at_start": open("/proc/loadavg", encoding="ascii").read().split()[:3],
        "gpu": cmd(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]) or "none (no nvidia-smi)",
        "rustc": cmd(["rustc", "--version"]),
        "nginx": cmd(["nginx", "-v"]),
        "wrk": cmd(["wrk", "--version"]).splitlines()[0] if cmd(["wrk", "--version"]) else "",
        "git": cmd(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]) +
               (" (with uncommitted changes)" if cmd(["git", "-C", ROOT, "status", "--porcelain"]) else ""),
    }


def machine_md(m):
    if not m:
        return ["_machine description not recorded (run `benches/run machine`)._"]
    return [
        "| | |", "|---|---|",
        f"| CPU | {m['cpu']}, {m['cpus']} CPUs, {m['threads_per_core']} thread(s) per core, hypervisor: {m['hypervisor']} |",
        f"| caches | {m['caches']} |",
        f"| memory | {m['memory']} |",
        f"| GPU | {m.get('gpu', 'not recorded')} |",
        f"| kernel | `{m['uname']}` |",
        f"| OS | {m['os']} |",
        f"| toolchain | {m['rustc']} |",
        f"| peers | {m['nginx']}; {m['wrk']} |",
        f"| load average at start | {' '.join(m['loadavg_at_start'])} (anything above 0 is other work sharing the CPUs) |",
        f"| commit | `{m['git']}` |",
        f"| recorded | {m['recorded']} |",
    ]


# ---------------------------------------------------------------- proxy


def ms(v):
    return f"{v:.2f}" if v is not None else "–"


def cpu_cell(x):
    cpu = x.get("proxy_cpu_s_per_1k")
    if cpu is None:
        return "–"
    if x.get("proxy_user_s_per_1k") is None:
        return f"{cpu:.4f}"
    return f"{cpu:.4f} ({x['proxy_user_s_per_1k']:.4f} + {x['proxy_sys_s_per_1k']:.4f})"


SHORT = {"direct": "(a) direct", "lb": "(b) gpt-oss-lb", "nginx": "(c) nginx proxy",
         "lb-rewrite": "(d) gpt-oss-lb + rewrite", "lb-wasm-headers": "(e) gpt-oss-lb + wasm headers",
         "lb-wasm-body": "(f) gpt-oss-lb + wasm body"}


def proxy_md(r):
    if not r:
        return ["**MISSING:** no `benches/out/proxy/results.json` (the proxy part did not run or crashed; "
                "see `benches/out/logs/proxy.log`)."]
    s = r["settings"]
    out = [
        "Paths: " + "; ".join(r["paths"].values()) + ".",
        "",
        f"Upstream: nginx serving canned bodies as static files (JSON {s['bodies']['json']} B; "
        f"SSE of 64 chunks {s['bodies']['sse']} B; raw-harmony SSE of 64 chunks {s['bodies']['harmony']} B). "
        f"Load: wrk on loopback, {s['duration_s']} s per point after {s['warmup_s']} s of warm-up. "
        f"Placement: {s['placement']}. nginx proxy: {s['proxy_workers']} worker; gpt-oss-lb: {s['lb_threads']}; "
        f"gpt-oss-lb log level `{s['lb_log']}` (nginx access log off).",
        "",
        "Latency is wrk's, from sending the request to the last byte of the response. CPU is utime+stime of "
        "the proxy process (all its threads or workers) over the run, per 1,000 requests (the direct "
        "path has no proxy).",
        "",
        "### Saturated: most requests/s (closed loop, each connection sends again when answered)",
        "",
        "| path | body | conns | req/s | p50 ms | p99 ms | p99.9 ms | proxy CPU s / 1k req (user + sys) | upstream CPU s / 1k req | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    runs = r["runs"]
    for x in runs:
        if x.get("mode", "saturated") != "saturated":
            continue
        out.append(
            f"| {SHORT[x['path']]} | {x['body']} | {x['connections']} | {x['rps']:,.0f} | {ms(x['p50_ms'])} | "
            f"{ms(x['p99_ms'])} | {ms(x['p99_9_ms'])} | {cpu_cell(x)} | "
            f"{x['upstream_cpu_s_per_1k']} | {x['error_count'] or 0} |")
    if r["ratios"]:
        out += ["", "Ratios gpt-oss-lb / nginx at saturation (same body, same connections):", "",
                "| body | conns | req/s ratio | p99 ratio | CPU per request ratio |",
                "|---|---:|---:|---:|---:|"]
        for x in r["ratios"]:
            out.append(f"| {x['body']} | {x['connections']} | **{x['rps_lb_over_nginx']:.2f}x** | "
                       f"{x['p99_lb_over_nginx']}x | {x['cpu_lb_over_nginx']}x |")
    if r.get("rewrite"):
        out += ["", "Harmony rewriting (d) against pass-through (b), same 64-chunk SSE framing, saturated: " +
                ", ".join(f"**{x['rps_rewrite_over_passthrough']:.2f}x** req/s "
                          f"({x['cpu_rewrite_over_passthrough']}x CPU per request) at {x['connections']} connections"
                          for x in r["rewrite"]) + "."]
    if r.get("plugins"):
        rounds = r["plugins"][0].get("rounds", 1)
        out += ["", "### proxy-wasm plugins: (e) a no-op filter on headers, (f) on bodies", "",
                "One gpt-oss-lb process, three routes to the same upstream: without a plugin, with (e), with "
                f"(f); saturated; {rounds} interleaved rounds of {s.get('plugin_duration_s', '?')} s per "
                "run (plain, (e), (f), plain, ...), each ratio against the plain run of its round; the "
                "median round is shown, with the range (the cost of the host's calls, since the filters do "
                "nothing):", "",
                "| path | body | conns | plain req/s | req/s | req/s ratio (min–max) | CPU per request ratio |",
                "|---|---|---:|---:|---:|---:|---:|"]
        for x in r["plugins"]:
            if x.get("pooled"):
                continue
            out.append(f"| {SHORT[x['path']]} | {x['body']} | {x['connections']} | {x.get('plain_rps', 0):,} | "
                       f"{x.get('rps', 0):,} | **{x['rps_over_lb']:.2f}x** ({x.get('rps_over_lb_min', 0):.2f}–"
                       f"{x.get('rps_over_lb_max', 0):.2f}) | {x['cpu_over_lb']}x |")
        pooled = [x for x in r["plugins"] if x.get("pooled")]
        if pooled:
            out += ["", "Pooled over every round and concurrency (all the variant's requests/s over all the plain "
                    "runs' beside them; the goals are judged on these): " +
                    "; ".join(f"{SHORT[x['path']]}, {x['body']}: **{x['rps_over_lb']:.2f}x** req/s, "
                              f"{x['cpu_over_lb']}x CPU per request" for x in pooled) + "."]
    paced = [x for x in runs if x.get("mode") == "paced"]
    if paced:
        out += ["", f"### Paced: latency against offered load ({s.get('paced_connections', 64)} connections, "
                "random think time before each request)", "",
                "| path | body | offered req/s | achieved req/s | p50 ms | p99 ms | p99.9 ms | proxy CPU s / 1k req | errors |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for x in paced:
            cpu = x["proxy_cpu_s_per_1k"]
            out.append(f"| {SHORT[x['path']]} | {x['body']} | {x['offered_rps']:,} | {x['rps']:,.0f} | "
                       f"{ms(x['p50_ms'])} | {ms(x['p99_ms'])} | {ms(x['p99_9_ms'])} | "
                       f"{cpu if cpu is not None else '–'} | {x['error_count'] or 0} |")
    if r.get("added"):
        out += ["", "Latency added over the direct path at the same paced load:", "",
                "| path | body | offered req/s | added p50 ms | added p99 ms |", "|---|---|---:|---:|---:|"]
        for x in r["added"]:
            out.append(f"| {SHORT[x['path']]} | {x['body']} | {x['offered_rps']:,} | "
                       f"{x['added_p50_ms']:+.2f} | {x['added_p99_ms']:+.2f} |")
    out += ["", "### Goals", ""]
    for g in r["goals"]:
        verdict = "**NOT MEASURED**" if g["met"] is None else ("**met**" if g["met"] else "**MISSED**")
        out.append(f"- {verdict}: {g['goal']}: {g['figure']}")
    for m in r["missing"]:
        out.append(f"- **MISSING path `{m['path']}`**: {m['reason'].splitlines()[0][:400]}")
    if os.path.exists(os.path.join(HERE, "proxy_latency.png")):
        out += ["", "![latency against offered load, proxy paths](proxy_latency.png)"]
    return out


# ---------------------------------------------------------------- other parts


def criterion_md(since):
    """Criterion's own estimates for the benchmarks that ran in this run (mtime >= since)."""
    rows = []
    for est in sorted(glob.glob(os.path.join(ROOT, "target", "criterion", "**", "new", "estimates.json"), recursive=True)):
        if os.path.getmtime(est) < since:
            continue
        meta = load(os.path.join(os.path.dirname(est), "benchmark.json")) or {}
        e = load(est) or {}
        mean = (e.get("mean") or {}).get("point_estimate")
        if mean is None:
            continue
        thr = meta.get("throughput") or {}
        rate = ""
        if "Bytes" in thr:
            rate = f"{thr['Bytes'] / (mean / 1e9) / 1e6:,.0f} MB/s"
        elif "Elements" in thr:
            rate = f"{thr['Elements'] / (mean / 1e9) / 1e6:,.2f} M elem/s"
        rows.append((meta.get("full_id") or os.path.relpath(os.path.dirname(os.path.dirname(est))), mean, rate))
    return rows


def part_log_lines(name, keywords):
    path = os.path.join(OUT, "logs", f"{name}.log")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [l.rstrip() for l in f if any(k in l.lower() for k in keywords)]
    except OSError:
        return []


def status(name):
    try:
        with open(os.path.join(OUT, "status", name), encoding="utf-8") as f:
            text = f.read().strip()
    except OSError:
        return None
    if text.startswith("missing="):
        return ("missing", text[len("missing="):])
    fields = dict(kv.split("=", 1) for kv in text.split())
    return ("ok" if fields.get("rc") == "0" else "failed", fields)


def status_md(name):
    st = status(name)
    if st is None:
        return [f"_not run in this invocation of `benches/run`._"]
    if st[0] == "missing":
        return [f"**MISSING:** {st[1]}"]
    if st[0] == "failed":
        return [f"**FAILED** (exit {st[1].get('rc')}), see `benches/out/logs/{name}.log`."]
    return []


def harmony_md(since):
    out = status_md("harmony")
    rows = criterion_md(since) if status("harmony") and status("harmony")[0] != "missing" else []
    if rows:
        out += ["| benchmark | mean time | throughput |", "|---|---:|---:|"]
        for bid, mean, rate in rows:
            out.append(f"| {bid} | {mean / 1e3:,.1f} µs | {rate} |")
    ratio_lines = [l for l in part_log_lines("harmony", ("ratio",)) if l.lstrip().startswith("ratio")]
    if ratio_lines:
        out += ["", "Ratios printed by the benchmark:", "", "```"] + ratio_lines + ["```"]
    return out


def instructions_md():
    out = status_md("instructions")
    rows = []
    for body in ("json", "sse", "harmony"):
        name = "instructions.json" if body == "json" else f"instructions-{body}.json"
        rows += load(os.path.join(OUT, "instructions", name)) or []
    if not rows:
        if status("instructions") and status("instructions")[0] == "ok":
            out.append("**MISSING:** no `benches/out/instructions/instructions*.json` was written.")
        return out
    out += ["User-space instructions per proxied request (4 connections), counted by "
            "`valgrind --tool=callgrind` after warm-up (`benches/proxy/instructions.py`; kernel work, "
            "about the same for both proxies, is not counted). On a busy machine nginx's count repeated within "
            "0.1% and gpt-oss-lb's within about 7% (slowed down, it does more event-loop rounds per request), "
            "where requests/s varied by 2x. The `harmony` body goes through gpt-oss-lb's edge "
            "rewriting; nginx has no such path.", "",
            "| proxy | body | requests counted | instructions per request |", "|---|---|---:|---:|"]
    for r in rows:
        out.append(f"| {r['proxy']} | {r['body']} | {r['requests']:,} | {r['instructions_per_request']:,} |")
    per = {(r["proxy"], r["body"]): r["instructions_per_request"] for r in rows if r["instructions_per_request"]}
    notes = []
    for body in ("json", "sse"):
        if ("nginx", body) in per and ("gpt-oss-lb", body) in per:
            notes.append(f"{body}: gpt-oss-lb / nginx **{per[('gpt-oss-lb', body)] / per[('nginx', body)]:.2f}x**")
    if ("gpt-oss-lb", "harmony") in per and ("gpt-oss-lb", "sse") in per:
        notes.append(f"rewriting / pass-through (gpt-oss-lb, 64-chunk SSE): "
                     f"**{per[('gpt-oss-lb', 'harmony')] / per[('gpt-oss-lb', 'sse')]:.2f}x**")
    if notes:
        out += ["", "; ".join(notes) + ". Top functions by inclusive cost: `benches/out/instructions/*.top.txt`."]
    return out


def generic_md(name):
    out = status_md(name)
    summary = os.path.join(OUT, name, "summary.md")
    if os.path.exists(summary):
        if status(name) is None or status(name)[0] != "ok":
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(os.path.getmtime(summary)))
            out += [f"_The figures below are from an earlier run of the part, written {when}._", ""]
        with open(summary, encoding="utf-8") as f:
            out += [f.read().rstrip()]
    elif status(name) and status(name)[0] == "ok":
        out += [f"**MISSING:** the {name} part ran but left no `benches/out/{name}/summary.md`."]
    return out


# ---------------------------------------------------------------- README


README_BEGIN = "<!-- benches/run: begin (written by benches/report.py; do not edit by hand) -->"
README_END = "<!-- benches/run: end -->"


def readme_block(proxy, started):
    """The summary the README quotes: the ratios against each peer and the goals, from the same
    figures as RESULTS.md."""
    m = load(os.path.join(OUT, "machine.json")) or {}
    out = [README_BEGIN, "",
           f"From `benches/run`, run {started or '(start time unknown)'} on {m.get('cpu', 'this machine')}, "
           f"{m.get('cpus', '?')} CPUs (every figure, with the settings: [benches/RESULTS.md](benches/RESULTS.md)).", ""]
    if proxy:
        out += ["**Proxy** (gpt-oss-lb / nginx as reverse proxy, same upstream, saturated; "
                f"{proxy['settings']['duration_s']} s per point):", "",
                "| body | conns | req/s ratio | p99 ratio | CPU per request ratio |", "|---|---:|---:|---:|---:|"]
        for x in proxy["ratios"]:
            out.append(f"| {x['body']} | {x['connections']} | **{x['rps_lb_over_nginx']:.2f}x** | "
                       f"{x['p99_lb_over_nginx']}x | {x['cpu_lb_over_nginx']}x |")
        out += [""]
        for g in proxy["goals"]:
            verdict = "NOT MEASURED" if g["met"] is None else ("met" if g["met"] else "MISSED")
            out.append(f"- **{verdict}**: {g['goal']}: {g['figure']}")
        out += [""]
    ins = [l for l in instructions_md() if "gpt-oss-lb / nginx" in l or "rewriting / pass-through" in l]
    if ins:
        out += ["Instructions per request (callgrind): " + ins[0].split(". Top functions")[0] + ".", ""]
    ratio_lines = [l.strip() for l in part_log_lines("harmony", ("ratio",)) if l.lstrip().startswith("ratio")]
    if ratio_lines:
        out += ["**harmony** against openai-harmony (`cargo bench -p benches --bench harmony`):", "", "```"] + ratio_lines + ["```", ""]
    for name, title in (("runtime", "**Runtime** against onnxruntime-genai's Generator, same model folder"),
                        ("server", "**gpt-oss-server** HTTP overhead"),
                        ("prefix_cache", "**Prefix caching** (multi-turn, 2 backends behind the LB)")):
        summary = os.path.join(OUT, name, "summary.md")
        if os.path.exists(summary) and status(name) and status(name)[0] == "ok":
            with open(summary, encoding="utf-8") as f:
                keep = [l.rstrip() for l in f if l.startswith(("|", "- MET", "- MISSED", "- NOT"))]
            out += [title + ":", ""] + keep + [""]
    plots = [(t, p) for t, p in (("latency against offered load, proxy paths", "benches/proxy_latency.png"),
                                 ("runtime tokens/s against concurrency", "benches/runtime_throughput.png"))
             if os.path.exists(os.path.join(ROOT, p))]
    if plots:
        out += ["Plots: " + ", ".join(f"[{t}]({p})" for t, p in plots) + ".", ""]
    out.append(README_END)
    return out


def update_readme(block):
    path = os.path.join(ROOT, "README.md")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return
    if README_BEGIN not in text or README_END not in text:
        print("report: README.md has no benches markers; not updated", file=sys.stderr)
        return
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    with open(path, "w", encoding="utf-8") as f:
        f.write(head + "\n".join(block) + tail)
    print("report: updated the benchmark summary in README.md", file=sys.stderr)


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--machine-only", action="store_true")
    ap.add_argument("--readme", action="store_true", help="also rewrite the summary block in README.md")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if args.machine_only:
        m = machine()
        with open(os.path.join(OUT, "machine.json"), "w", encoding="utf-8") as f:
            json.dump(m, f, indent=1)
        print("\n".join(machine_md(m)))
        return 0

    started = os.environ.get("BENCH_STARTED", "")
    h = status("harmony")
    since = float(h[1].get("start", 0)) if h and isinstance(h[1], dict) else 0.0
    proxy = load(os.path.join(OUT, "proxy", "results.json"))
    lines = [
        "# Benchmark results",
        "",
        "Regenerate with `benches/run` (from a fresh clone; it installs nginx-light and wrk from Debian, "
        "matplotlib from PyPI, and builds the release binaries). "
        f"This file was written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        + (f" by a run started {started}" if started else "") + ".",
        "",
    ]
    warnings = []
    if proxy and proxy["settings"]["duration_s"] < 10:
        warnings.append(f"a short run ({proxy['settings']['duration_s']} s per proxy point; "
                        "`benches/run` defaults to 10 s): a pipeline check, not figures to quote")
    m = load(os.path.join(OUT, "machine.json"))
    if m:
        try:
            load1 = float(m["loadavg_at_start"][0])
            if load1 > 0.5 * float(m["cpus"]):
                warnings.append(f"the machine was busy when the run started (load average {load1:.1f} on "
                                f"{m['cpus']} CPUs): requests/s and latencies are noisy; CPU per request and "
                                "instruction counts much less so")
        except (KeyError, ValueError, IndexError):
            pass
    if warnings:
        lines += ["> **Warning:** " + "; ".join(warnings) + ".", ""]
    lines += ["## Machine", ""]
    lines += machine_md(load(os.path.join(OUT, "machine.json")))
    lines += ["", "## Proxy: gpt-oss-lb against nginx", ""] + status_md("proxy")
    if proxy and status("proxy") is None:
        lines += [f"_The figures below are from an earlier run, recorded {proxy.get('recorded', '(date unknown)')}._", ""]
    lines += proxy_md(proxy)
    lines += ["", "### Instructions per request (callgrind)", ""] + instructions_md()
    lines += ["", "## harmony: ours against openai-harmony", ""] + harmony_md(since)
    lines += ["", "## Runtime: ours against onnxruntime-genai", ""] + generic_md("runtime")
    if os.path.exists(os.path.join(HERE, "runtime_throughput.png")) and os.path.exists(os.path.join(OUT, "runtime", "results.json")):
        lines += ["", "![runtime throughput against concurrency](runtime_throughput.png)"]
    lines += ["", "## gpt-oss-server: HTTP overhead", ""] + generic_md("server")
    lines += ["", "## Prefix caching and cache-aware routing", ""] + generic_md("prefix_cache")
    lines += ["", "## Real shape: gpt-oss-20b int4 on CPU, ours against onnxruntime-genai", ""] + generic_md("realshape")
    bad = [p for p in PARTS if status(p) is not None and status(p)[0] != "ok"]
    not_run = [p for p in PARTS if status(p) is None]
    lines += ["", "## Parts not measured in this run", ""]
    lines += [f"- `{p}`: {status(p)[0]}" for p in bad] + [f"- `{p}`: not run" for p in not_run] or ["none"]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"report: wrote {args.out}", file=sys.stderr)
    if args.readme:
        update_readme(readme_block(proxy, started))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
