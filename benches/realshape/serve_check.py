#!/usr/bin/env python3
"""gpt-oss-server on the 24-layer gpt-oss-20b-shaped model (issue 18, item 3), with the default
flags and real clients:

  1. the seed prototype's curl (its exact body, `curl` itself);
  2. a stream (the OpenAI Python SDK, `stream=True`);
  3. 4 concurrent requests (the SDK on 4 threads);
  4. a client that disconnects mid-stream: the server's running count drops, the next request works;
  5. N requests one after another (default 100): the server's resident memory after request 10
     and after request N.

The model has random weights, so the text is noise; what is checked is the serving: statuses,
shapes, finish reasons, the queue and memory. Prints one JSON object per step and a summary;
exits 1 when a check fails.

Usage: serve_check.py --model DIR [--server target/release/gpt-oss-server] [--requests 100]
Runs with the project's .venv python (the openai SDK).
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

from openai import OpenAI

SEED_BODY = {
    "messages": [
        {"role": "system", "content": "Always answer in just single word."},
        {"role": "user", "content": "What is the capital of the US?"},
    ],
    "max_tokens": 1000,
    "temperature": 0.7,
    "separate_thinking": True,
}


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def get_json(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def generated_tokens(base):
    """gpt_oss_generated_tokens_total from /metrics."""
    with urllib.request.urlopen(base + "/metrics", timeout=30) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("gpt_oss_generated_tokens_total"):
                return float(line.split()[-1])
    return 0.0


def report(step, ok, **fields):
    print(json.dumps({"step": step, "ok": ok, **fields}), flush=True)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--server", default="target/release/gpt-oss-server")
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=4, help="per request of the memory loop")
    ap.add_argument("--only", help="comma-separated steps: seed_curl,stream,concurrent_4,disconnect,memory")
    a = ap.parse_args()

    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
    data_home = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"serve-check-{os.getpid()}")
    env["XDG_DATA_HOME"] = data_home
    proc = subprocess.Popen([a.server, "--model-path", a.model, "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=open(os.path.join("/tmp", f"serve-check-{os.getpid()}.log"), "w"),
                            text=True, env=env)
    ok = True
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on "), line
        base = line.removeprefix("listening on ")
        t0 = time.time()
        while True:
            try:
                h = get_json(base + "/health")
                if h.get("status") == "ok":
                    break
            except Exception:
                pass
            if proc.poll() is not None or time.time() - t0 > 600:
                report("load", False, error="the server did not become healthy")
                return 1
            time.sleep(0.5)
        model = get_json(base + "/v1/models")["data"][0]
        ok &= report("load", True, seconds=round(time.time() - t0, 1), rss_bytes=rss(proc.pid),
                     model=model["id"], max_model_len=model.get("max_model_len"))
        client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=1800)

        def seed_curl():
            t = time.time()
            out = subprocess.run(["curl", "-sS", base + "/v1/chat/completions", "-H",
                                  "Content-Type: application/json", "-d", json.dumps(SEED_BODY)],
                                 capture_output=True, text=True, timeout=1800)
            body = json.loads(out.stdout)
            choice = body["choices"][0]
            return report("seed_curl", choice["finish_reason"] in ("stop", "length"),
                          seconds=round(time.time() - t, 1), finish_reason=choice["finish_reason"],
                          usage=body.get("usage"), fields=sorted(choice["message"].keys()))

        def stream():
            t = time.time()
            chunks, finish = 0, None
            for c in client.chat.completions.create(model=model["id"], stream=True, max_tokens=16,
                                                    messages=[{"role": "user", "content": "Hello"}]):
                chunks += 1
                if c.choices and c.choices[0].finish_reason:
                    finish = c.choices[0].finish_reason
            return report("stream", finish is not None and chunks > 1, seconds=round(time.time() - t, 1),
                          chunks=chunks, finish_reason=finish)

        def concurrent_4():
            t = time.time()
            results = [None] * 4

            def one(i):
                try:
                    r = client.chat.completions.create(model=model["id"], max_tokens=16,
                                                       messages=[{"role": "user", "content": f"Count to {i + 3}"}])
                    results[i] = r.choices[0].finish_reason
                except Exception as e:  # noqa: BLE001 - reported below
                    results[i] = f"error: {e}"

            threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            return report("concurrent_4", all(r in ("stop", "length") for r in results),
                          seconds=round(time.time() - t, 1), finish_reasons=results)

        def disconnect():
            # A random model's tokens may stream no delta until the end, so the server's running
            # count says when it generates, not the chunks.
            s = client.chat.completions.create(
                model=model["id"], stream=True, max_tokens=500, extra_body={"min_tokens": 400},
                messages=[{"role": "user", "content": "Tell a long story"}])
            running_before = None
            for _ in range(600):
                running_before = get_json(base + "/queue/status").get("running")
                if running_before == 1:
                    break
                time.sleep(0.1)
            time.sleep(2)  # a few tokens into the generation
            t = time.time()
            s.close()
            freed = None
            for _ in range(600):
                if get_json(base + "/queue/status").get("running") == 0:
                    freed = round(time.time() - t, 2)
                    break
                time.sleep(0.05)
            # The engine stops too: no token is generated a second after the close.
            time.sleep(1)
            before = generated_tokens(base)
            time.sleep(2)
            generated_after = generated_tokens(base) - before
            after = client.chat.completions.create(model=model["id"], max_tokens=2,
                                                   messages=[{"role": "user", "content": "Hi"}])
            return report("disconnect", running_before == 1 and freed is not None and freed < 5
                          and generated_after == 0 and after.choices[0].finish_reason in ("stop", "length"),
                          running_before_close=running_before, seconds_until_idle=freed,
                          tokens_generated_1_to_3_s_after_close=generated_after,
                          next_request=after.choices[0].finish_reason)

        def memory():
            samples = {}
            t = time.time()
            for i in range(1, a.requests + 1):
                client.chat.completions.create(model=model["id"], max_tokens=a.max_tokens,
                                               messages=[{"role": "user", "content": f"Request {i}"}])
                if i in (min(10, a.requests), a.requests):
                    samples[i] = rss(proc.pid)
            first = samples[min(10, a.requests)]
            growth = samples[a.requests] / first - 1
            return report("memory", growth < 0.05, requests=a.requests, seconds=round(time.time() - t, 1),
                          rss_after_10=first, rss_after_n=samples[a.requests], growth=growth)

        steps = {"seed_curl": seed_curl, "stream": stream, "concurrent_4": concurrent_4,
                 "disconnect": disconnect, "memory": memory}
        for name in (a.only.split(",") if a.only else steps):
            ok &= steps[name]()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(json.dumps({"step": "summary", "ok": bool(ok)}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
