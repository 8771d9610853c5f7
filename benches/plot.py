#!/usr/bin/env python3
"""Draws the benchmark plots from benches/out/ (run by benches/run with benches/out/venv/bin/python).

    benches/out/venv/bin/python benches/plot.py --out benches

- proxy_latency.png: p50 and p99 latency against offered load (paced runs, requests/s), and the
  most requests/s against connections (saturated runs), for each proxy path; JSON body and SSE
  bodies side by side.
- runtime_throughput.png: the runtime's generated tokens/s against concurrent requests (1, 2, 4, 8),
  ours against onnxruntime-genai, from the runtime part's results.

A plot whose data is missing is not drawn; the script says which and exits 1.
"""
import argparse
import json
import os
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")

STYLE = {  # path -> (label, colour)
    "direct": ("(a) direct to upstream", "#7f7f7f"),
    "lb": ("(b) gpt-oss-lb", "#1f77b4"),
    "nginx": ("(c) nginx proxy", "#2ca02c"),
    "lb-rewrite": ("(d) gpt-oss-lb + harmony rewrite", "#d62728"),
}


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def proxy_plot(dest):
    r = load(os.path.join(OUT, "proxy", "results.json"))
    if not r or not r.get("runs"):
        print("plot: MISSING benches/out/proxy/results.json (proxy part not run): proxy_latency.png not drawn",
              file=sys.stderr)
        return False
    runs = r["runs"]
    panels = [("JSON body (chat.completion)", {"direct": "json", "lb": "json", "nginx": "json"}),
              ("SSE body, 64 chunks", {"direct": "sse", "lb": "sse", "nginx": "sse", "lb-rewrite": "harmony"})]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    for col, (title, which) in enumerate(panels):
        lat, thr = axes[0][col], axes[1][col]
        for path, body in which.items():
            label, colour = STYLE[path]
            paced = sorted((x["offered_rps"], x) for x in runs
                           if x["path"] == path and x["body"] == body and x.get("mode") == "paced")
            if paced:
                xs = [o for o, _ in paced]
                lat.plot(xs, [x["p99_ms"] for _, x in paced], "o-", color=colour, label=f"{label} p99")
                lat.plot(xs, [x["p50_ms"] for _, x in paced], "s--", color=colour, alpha=0.6, label=f"{label} p50")
            sat = sorted((x["connections"], x) for x in runs
                         if x["path"] == path and x["body"] == body and x.get("mode", "saturated") == "saturated")
            if sat:
                thr.plot([c for c, _ in sat], [x["rps"] for _, x in sat], "o-", color=colour, label=label)
        lat.set_title(f"{title}: latency against offered load")
        lat.set_xlabel(f"offered load, requests/s ({r['settings'].get('paced_connections', 64)} connections, paced)")
        lat.set_ylabel("latency, ms (log)")
        lat.set_yscale("log")
        lat.grid(True, which="both", alpha=0.3)
        lat.legend(fontsize=7)
        thr.set_title(f"{title}: most requests/s (saturated)")
        thr.set_ylabel("requests/s")
        thr.set_xlabel("concurrent connections (closed loop, log2)")
        thr.set_xscale("log", base=2)
        thr.set_xticks(r["settings"]["connections"])
        thr.set_xticklabels([str(c) for c in r["settings"]["connections"]])
        thr.set_ylim(bottom=0)
        thr.grid(True, alpha=0.3)
        thr.legend(fontsize=7)
    s = r["settings"]
    fig.suptitle(f"gpt-oss-lb against nginx (wrk, {s['duration_s']} s per point; "
                 f"{s['placement']})", fontsize=9)
    fig.tight_layout()
    path = os.path.join(dest, "proxy_latency.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: wrote {path}", file=sys.stderr)
    return True


def runtime_points(r):
    """[(engine, concurrency, tokens/s)] from the runtime part's results.json."""
    pts = []
    for x in r.get("throughput", []):
        pts.append((x["engine"], int(x["concurrency"]), float(x["tokens_per_s"])))
    return pts


def runtime_plot(dest):
    r = load(os.path.join(OUT, "runtime", "results.json"))
    pts = runtime_points(r) if r else []
    if not pts:
        print("plot: MISSING runtime throughput against concurrency (benches/out/runtime/results.json "
              "with a `throughput` list): runtime_throughput.png not drawn", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for engine in sorted({e for e, _, _ in pts}):
        xs = sorted((c, t) for e, c, t in pts if e == engine)
        ax.plot([c for c, _ in xs], [t for _, t in xs], "o-", label=engine)
    ax.set_xscale("log", base=2)
    conc = sorted({c for _, c, _ in pts})
    ax.set_xticks(conc)
    ax.set_xticklabels([str(c) for c in conc])
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("generated tokens/s (all requests)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(textwrap.fill(r.get("title", "Runtime throughput against concurrency"), 90), fontsize=8)
    fig.tight_layout()
    path = os.path.join(dest, "runtime_throughput.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: wrote {path}", file=sys.stderr)
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=HERE)
    args = ap.parse_args()
    ok = proxy_plot(args.out)
    ok = runtime_plot(args.out) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
