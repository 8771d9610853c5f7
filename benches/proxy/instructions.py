#!/usr/bin/env python3
"""Instructions per request of each proxy, counted by valgrind's callgrind: a figure that stays
the same from run to run whatever else the machine is doing (requests/s on a shared 2-core
machine does not), so a change to gpt-oss-lb can be judged before and after.

    python3 benches/proxy/instructions.py [--body json|sse|harmony] [--seconds 8] [--out DIR] [--cache-sim]

The upstream nginx runs natively; the proxy under test (nginx as reverse proxy, single process,
and gpt-oss-lb with --threads 1) runs under `valgrind --tool=callgrind --instr-atstart=no`.
After start-up and a warm-up, counting is switched on (callgrind_control -i on) for an idle
window and then for the same time while wrk sends requests over 4 connections; the idle rate
(timers, health checks) is subtracted before dividing by the requests served. Writes
OUT/instructions.json and, per proxy, the callgrind output file (open it with callgrind_annotate
or kcachegrind) and the top functions by inclusive cost in OUT/PROXY.top.txt.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (same directory: ports, configs, process helpers, checks)


def callgrind_events(path):
    """Every event of the `totals:` line of a callgrind file, by the names of its `events:` line
    (`Ir` alone by default; with --cache-sim also I1mr, D1mr, DLmr, ..., Bc, Bcm, ...). The
    `summary:` line is the fallback (it can be 0 in a dump)."""
    names, found = ["Ir"], {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("events:"):
                names = line.split()[1:]
            elif line.startswith(("summary:", "totals:")):
                found[line.split(":")[0]] = [int(v) for v in line.split()[1:]]
    if not found:
        raise bench.BenchError(f"{path}: no totals line")
    values = found.get("totals", found.get("summary"))
    return dict(zip(names, values))


def callgrind_total(path):
    """The instructions (`Ir`) of the `totals:` line of a callgrind file."""
    return callgrind_events(path)["Ir"]


def measure(name, argv, port, body, seconds, out, run, upstream, env=None, cache_sim=False):
    prefix = os.path.join(out, f"{name}-{body}.callgrind")
    for old in glob.glob(prefix + "*"):
        os.remove(old)
    vg = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={prefix}.%p"]
    if cache_sim:
        # Simulated caches (valgrind's model of the host's L1 and last level) and branch
        # predictors: misses per request, which the instruction count alone does not show.
        vg += ["--cache-sim=yes", "--branch-sim=yes"]
    proc = bench.Proc(f"{name}-callgrind", vg + argv, run, env=env)
    try:
        bench.wait_ready(name, body, port, proc, 120)
        bench.check_path("lb-rewrite" if body == "harmony" else ("lb" if name == "gpt-oss-lb" else name),
                         body, port)
        # Warm-up (pools, caches), not counted.
        subprocess.run(["wrk", "-t1", "-c4", "-d2s", "-s", os.path.join(bench.HERE, "post.lua"),
                        f"http://127.0.0.1:{port}/v1/chat/completions", "--", bench.BODY[body][1],
                        bench.BODY[body][2]], capture_output=True, timeout=60, check=False)
        ctl = lambda *a: subprocess.run(["callgrind_control", *a, str(proc.pid)],  # noqa: E731
                                        capture_output=True, timeout=120, check=True)
        # Count an idle window first (timers, health checks), then the same time under load;
        # the idle rate is subtracted so that background work does not depend on how many
        # requests a slow (instrumented) process managed to serve.
        ctl("-i", "on")
        t0 = time.monotonic()
        time.sleep(seconds)
        ctl("-d")
        idle_s = time.monotonic() - t0
        t1 = time.monotonic()
        w = subprocess.run(["wrk", "-t1", "-c4", f"-d{seconds}s", "--timeout", "10s", "-s",
                            os.path.join(bench.HERE, "post.lua"), f"http://127.0.0.1:{port}/v1/chat/completions",
                            "--", bench.BODY[body][1], bench.BODY[body][2]],
                           capture_output=True, text=True, timeout=seconds + 60)
        ctl("-d")
        load_s = time.monotonic() - t1
        ctl("-i", "off")
        res = next(json.loads(l[9:]) for l in w.stdout.splitlines() if l.startswith("WRK_JSON "))
        time.sleep(1)
    finally:
        proc.stop()
    dumps = {}
    for f in glob.glob(prefix + ".*.*"):
        try:
            dumps[int(f.rsplit(".", 1)[1])] = f
        except ValueError:
            continue
    if 1 not in dumps or 2 not in dumps:
        raise bench.BenchError(f"{name}: callgrind dumps missing ({sorted(dumps)})")
    idle, load = callgrind_total(dumps[1]), callgrind_total(dumps[2])
    n = res["requests"]
    errors = sum(res["errors"].values())
    net = load - idle * (load_s / idle_s)
    top = subprocess.run(["callgrind_annotate", "--inclusive=yes", dumps[2]], capture_output=True, text=True).stdout
    with open(os.path.join(out, f"{name}-{body}.top.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(top.splitlines()[:200]) + "\n")
    result = {"proxy": name, "body": body, "requests": n, "errors": errors, "instructions_under_load": load,
              "idle_instructions_per_s": round(idle / idle_s),
              "instructions_per_request": round(net / n) if n else None, "callgrind_file": dumps[2]}
    if cache_sim:
        idle_ev, load_ev = callgrind_events(dumps[1]), callgrind_events(dumps[2])
        result["events_per_request"] = {
            k: round((v - idle_ev.get(k, 0) * (load_s / idle_s)) / n, 1) if n else None
            for k, v in load_ev.items()}
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--body", default="json", choices=["json", "sse", "harmony"],
                    help="harmony: gpt-oss-lb only, rewriting the raw-harmony stream (nginx has no such path)")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--out", default=os.path.join(bench.ROOT, "benches", "out", "instructions"))
    ap.add_argument("--lb-bin", default=os.environ.get("GPT_OSS_LB_BIN"))
    ap.add_argument("--cache-sim", action="store_true",
                    help="also simulate caches and branch prediction: misses per request")
    args = ap.parse_args()
    args.out = os.path.abspath(args.out)
    if not shutil.which("valgrind"):
        raise SystemExit("instructions: valgrind is missing (apt-get install valgrind)")
    bench.ensure_tools()
    run = os.path.join(args.out, "run")
    os.makedirs(run, exist_ok=True)
    base = bench.free_port_block(18300, 6)
    ports = {"json": base, "sse": base + 1, "harmony": base + 2}
    user = "user root;" if os.geteuid() == 0 else ""
    common = {"USER": user, "RUN": run, "BODIES": bench.BODIES, "PORT_JSON": ports["json"],
              "PORT_SSE": ports["sse"], "PORT_HARMONY": ports["harmony"]}
    upstream = bench.start_nginx("nginx-upstream", bench.fill("nginx-upstream.conf.in", dict(common, WORKERS=1)),
                                 run, 0, False)
    results = []
    try:
        bench.wait_ready("direct", "json", ports["json"], upstream, 15)
        # nginx as reverse proxy, one process (no master) so valgrind sees the worker.
        conf = bench.fill("nginx-proxy.conf.in", dict(common, WORKERS=1, PROXY_JSON=base + 3, PROXY_SSE=base + 4))
        conf = conf.replace("master_process on;", "master_process off;")
        conf_path = os.path.join(run, "nginx-proxy-single.conf")
        with open(conf_path, "w", encoding="utf-8") as f:
            f.write(conf)
        proxy_port = base + 3 if args.body == "json" else base + 4
        if args.body != "harmony":
                results.append(measure("nginx", ["nginx", "-c", conf_path, "-p", run, "-e",
                                             os.path.join(run, "nginx-proxy.err")],
                                   proxy_port, args.body, args.seconds, args.out, run, upstream,
                                   cache_sim=args.cache_sim))
        exe = args.lb_bin or os.path.join(bench.ROOT, "target", "release", "gpt-oss-lb")
        cfg = os.path.join(run, "lb.yaml")
        with open(cfg, "w", encoding="utf-8") as f:
            f.write(bench.lb_config(ports, base + 5))
        results.append(measure("gpt-oss-lb", [exe, "--config", cfg, "--threads", "1",
                                              "--pid-file", os.path.join(run, "lb.pid"),
                                              "--upgrade-sock", os.path.join(run, "lb-upgrade.sock")],
                               base + 5, args.body, args.seconds, args.out, run, upstream,
                               env=dict(os.environ, RUST_LOG=os.environ.get("BENCH_LB_LOG", "warn")),
                               cache_sim=args.cache_sim))
    finally:
        upstream.stop()
    for r in results:
        print(f"{r['proxy']:11s} {r['body']}: {r['instructions_per_request']:,} instructions per request "
              f"({r['requests']} requests, {r['errors']} errors)")
        if "events_per_request" in r:
            print("            per request: " + ", ".join(f"{k} {v:,}" for k, v in r["events_per_request"].items()))
    if len(results) == 2 and results[0]["instructions_per_request"] and results[1]["instructions_per_request"]:
        print(f"gpt-oss-lb / nginx: {results[1]['instructions_per_request'] / results[0]['instructions_per_request']:.2f}x")
    with open(os.path.join(args.out, f"instructions{'' if args.body == 'json' else '-' + args.body}.json"),
              "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
