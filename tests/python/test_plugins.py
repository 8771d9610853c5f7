"""Plugins in gpt-oss-lb (issue 20): proxy-wasm filters built from source by the test command
(`scripts/build-plugins`: C with clang; WAT as text; `tests/plugins/assemblyscript/build`: a
filter written against the AssemblyScript proxy-wasm SDK from npm), run by the real LB in front
of a real gpt-oss-server (the embedded gpt-oss-nano, default flags, registered the default
way), called with the official OpenAI Python SDK, streamed and not.

Checked: each example filter's effect (the API-key check answering 401 locally, e-mail
redaction on the route that lists it and not on another, token accounting in response headers
and metrics), the order of the chain, hot reload under load without a failed request, the
trapping, looping and memory-hungry filters failing only their own request (and `fail_open`
letting it through), the SDK filter running unchanged, and `/status` listing the chain.
"""

import concurrent.futures
import json
import os
import re
import signal
import threading
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from conftest import ROOT, EmbeddedServer, Lb

MODEL = "gpt-oss-20b"
PLUGINS = ROOT / "target" / "plugins"
KEY = "sk-team-alpha"


def config(order=("api-key", "as"), as_conf="as-ok", trap_fail_open=False):
    """The LB's YAML: global plugins in `order`, then the fault filters; `redact` only on the
    `nano-private` route, `tokens` on both routes."""
    globals_ = {
        "api-key": f"""  - name: api-key
    path: {PLUGINS / 'api_key.wasm'}
    configuration: "{KEY}, sk-team-beta"
""",
        "as": f"""  - name: as
    path: {PLUGINS / 'as_headers.wasm'}
    configuration: {as_conf}
""",
    }
    plugins = "".join(globals_[n] for n in order)
    plugins += f"""  - name: trap
    path: {PLUGINS / 'trap.wat'}
    fail_open: {str(trap_fail_open).lower()}
  - name: loop
    path: {PLUGINS / 'loop.wat'}
    call_timeout: 100ms
  - name: memory
    path: {ROOT / 'tests' / 'plugins' / 'memory_hog.wat'}
    max_memory_mib: 4
  - name: tick
    path: {ROOT / 'tests' / 'plugins' / 'tick_shared.wat'}
  - name: redact
    path: {PLUGINS / 'redact_email.wasm'}
    global: false
  - name: tokens
    path: {PLUGINS / 'token_accounting.wasm'}
    global: false
"""
    return f"""health_check: {{interval: 300ms, timeout: 300ms}}
backends: []
routes:
  - model: {MODEL}
    plugins: [tokens]
  - model: nano-private
    upstream_model: {MODEL}
    backends: [a]
    plugins: [redact, tokens]
plugins:
{plugins}"""


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    for f in ("api_key.wasm", "redact_email.wasm", "token_accounting.wasm", "trap.wat",
              "loop.wat", "as_headers.wasm"):
        assert (PLUGINS / f).is_file(), f"{f} missing: run scripts/build-plugins and tests/plugins/assemblyscript/build"
    server = EmbeddedServer(tmp_path_factory.mktemp("nano-cache"), tmp_path_factory.mktemp("nano-logs"))
    lb = Lb(config(), tmp_path_factory.mktemp("lb"))
    lb.register({"name": "a", "url": server.url, "models": [MODEL]})
    lb.wait_healthy(["a"])
    yield server, lb
    lb.stop()
    server.stop()


def client(lb, key=KEY, **headers):
    return openai.OpenAI(base_url=lb.url + "/v1", api_key=key, max_retries=0, timeout=120,
                         default_headers=headers or None)


def chat(c, content="What is 2+2?", model=MODEL, **kw):
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                     max_tokens=24, temperature=0, **kw)


def reload(lb, yaml):
    """Rewrite the LB's config and reload it (SIGHUP), then wait until it took effect."""
    before = metric(lb, "gpt_oss_lb_config_reloads_total")
    (lb.dir / "lb.yaml").write_text(yaml)
    os.kill(lb.proc.pid, signal.SIGHUP)
    deadline = time.time() + 30
    while metric(lb, "gpt_oss_lb_config_reloads_total") <= before:
        assert time.time() < deadline, lb.log_path.read_text()[-3000:]
        time.sleep(0.05)


def metric(lb, name, labels=""):
    with urllib.request.urlopen(lb.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_status_lists_the_chain_with_the_builtin_harmony_filter_first(door):
    _, lb = door
    st = lb.status()
    chain = st["filter_chain"]
    assert chain[0]["name"] == "harmony" and chain[0]["kind"] == "builtin"
    assert [p["name"] for p in chain[1:]] == ["api-key", "as", "trap", "loop", "memory", "tick", "redact", "tokens"]
    routes = {r["name"]: r["plugins"] for r in st["routes"]}
    assert routes[MODEL] == ["api-key", "as", "trap", "loop", "memory", "tick", "tokens"]
    assert routes["nano-private"] == ["api-key", "as", "trap", "loop", "memory", "tick", "redact", "tokens"]


def test_api_key_filter_answers_401_locally(door):
    _, lb = door
    for key in ("sk-wrong", "unused"):
        with pytest.raises(openai.AuthenticationError) as e:
            chat(client(lb, key=key))
        assert e.value.status_code == 401
        assert e.value.body["code"] == "invalid_api_key"
        assert "api_key plugin" in e.value.body["message"]
    # no request reached the backend, and a good key goes through, streamed or not
    answer = chat(client(lb))
    assert answer.choices[0].message.content
    chunks = list(chat(client(lb, key="sk-team-beta"), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_redaction_applies_on_its_route_only(door):
    _, lb = door
    c = client(lb)
    text = "Mail alice.smith+x@example.co.uk or bob@test.org about it."
    for model, expected in (("nano-private", "Mail [email redacted] or [email redacted] about it."),
                            (MODEL, text)):
        r = c.responses.create(model=model, input=text, max_output_tokens=16, store=True)
        items = c.responses.input_items.list(r.id)
        seen = items.data[0].content[0].text
        assert seen == expected, (model, seen)
    assert metric(lb, "redact_email_redactions_total", '{plugin="redact"}') >= 2


def test_token_accounting_adds_usage_headers_and_counts_streams(door):
    _, lb = door
    c = client(lb)
    raw = c.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=24)
    body = raw.parse()
    # the held header goes out framed (the LB rewrites gpt-oss answers: no content-length)
    assert raw.headers.get("transfer-encoding") == "chunked" or "content-length" in raw.headers, raw.headers
    assert raw.headers["x-usage-prompt-tokens"] == str(body.usage.prompt_tokens)
    assert raw.headers["x-usage-completion-tokens"] == str(body.usage.completion_tokens)
    assert raw.headers["x-usage-total-tokens"] == str(body.usage.total_tokens)
    # the Responses API too (usage named input/output tokens there)
    raw = c.responses.with_raw_response.create(model=MODEL, input="Name a fruit.", max_output_tokens=24)
    r = raw.parse()
    assert raw.headers["x-usage-prompt-tokens"] == str(r.usage.input_tokens)
    assert raw.headers["x-usage-completion-tokens"] == str(r.usage.output_tokens)
    # a stream is not held back: no headers, but its usage is counted in the plugin's metrics
    before = metric(lb, "token_accounting_completion_tokens_total", '{plugin="tokens"}')
    with c.chat.completions.with_streaming_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Name an animal."}], max_tokens=24,
            stream=True, stream_options={"include_usage": True}) as s:
        assert "x-usage-total-tokens" not in s.headers
        chunks = [json.loads(line[6:]) for line in s.iter_lines()
                  if line.startswith("data: {")]
    usage = chunks[-1]["usage"]
    deadline = time.time() + 5
    while metric(lb, "token_accounting_completion_tokens_total", '{plugin="tokens"}') < before + usage["completion_tokens"]:
        assert time.time() < deadline
        time.sleep(0.05)


def test_ticks_shared_data_and_properties_reach_filters(door):
    """proxy_on_tick runs on the period the filter set; what it stores with
    proxy_set_shared_data is read back in a request's callback, with the chosen backend from
    proxy_get_property (`gpt_oss.backend`)."""
    _, lb = door
    raw = client(lb).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert raw.headers["x-ticked"] == "1"
    assert raw.headers["x-backend-seen"] == "a"


def test_sdk_filter_runs_unchanged(door):
    """The AssemblyScript filter uses the public SDK (@gcoredev/proxy-wasm-sdk-as) as its
    README shows: request and response headers, configuration, a local 403."""
    _, lb = door
    raw = client(lb).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
    assert raw.headers["x-as-filter"] == "as-ok"
    with pytest.raises(openai.PermissionDeniedError) as e:
        chat(client(lb, **{"x-as-deny": "1"}), stream=True)
    assert e.value.body["code"] == "as_denied"


def test_faulty_filters_fail_only_their_own_request(door):
    """Trapping, looping and memory-hungry filters: their requests get a 500 naming the plugin,
    while requests beside them (streamed) all succeed and the LB stays up."""
    _, lb = door
    faults = {"trap": "trapped", "loop": "call_timeout of 100 ms", "grow": "memory limit of 4 MiB"}

    def good(i):
        chunks = list(chat(client(lb), content=f"Count to {i % 5 + 2}.", stream=True))
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    def bad(kind):
        try:
            chat(client(lb, **{"x-plugin-fault": kind}))
        except openai.InternalServerError as e:
            return kind, e.body
        return kind, None

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        goods = [pool.submit(good, i) for i in range(6)]
        bads = [pool.submit(bad, k) for k in faults for _ in range(3)]
        for f in goods:
            assert f.result()
        for f in bads:
            kind, body = f.result()
            assert body is not None, f"{kind} request succeeded"
            assert body["code"] == "plugin_failed"
            plugin = {"grow": "memory"}.get(kind, kind)
            assert f"plugin '{plugin}' failed" in body["message"] and faults[kind] in body["message"], body
    assert lb.proc.poll() is None
    for plugin in ("trap", "loop", "memory"):
        assert metric(lb, "gpt_oss_lb_plugin_failures_total", f'{{plugin="{plugin}"}}') >= 3
    # the rebuilt VMs serve the next requests
    assert good(1)


def test_chain_order_and_hot_reload_under_load(door):
    """Requests keep flowing while the chain is reloaded five times (order swapped, a plugin's
    configuration changed, fail_open switched): none fails, and each change takes effect."""
    _, lb = door
    stop = threading.Event()
    results = []

    def load():
        c = client(lb)
        while not stop.is_set():
            try:
                raw = c.chat.completions.with_raw_response.create(
                    model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
                results.append(raw.http_response.status_code)
            except Exception as e:  # noqa: BLE001 - every failure is counted
                results.append(repr(e))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        # api-key first: a keyless request that the AS filter would deny gets the 401
        denied = client(lb, key="none", **{"x-as-deny": "1"})
        with pytest.raises(openai.AuthenticationError):
            chat(denied)
        reload(lb, config(order=("as", "api-key")))
        with pytest.raises(openai.PermissionDeniedError):
            chat(denied)
        reload(lb, config(order=("as", "api-key"), as_conf="as-v2"))
        raw = client(lb).chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert raw.headers["x-as-filter"] == "as-v2"
        reload(lb, config(trap_fail_open=True))
        assert chat(client(lb, **{"x-plugin-fault": "trap"})).choices
        reload(lb, config())
        with pytest.raises(openai.InternalServerError):
            chat(client(lb, **{"x-plugin-fault": "trap"}))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert results and all(r == 200 for r in results), [r for r in results if r != 200][:5]
    assert lb.status()["filter_chain"][1]["name"] == "api-key"


def test_a_config_with_a_bad_plugin_is_refused_with_its_field_path(door, tmp_path):
    _, lb = door
    bad = tmp_path / "bad.wat"
    bad.write_text("(module (memory (export \"memory\") 1))")
    yaml = config() + f"  - name: not-a-filter\n    path: {bad}\n"
    before = metric(lb, "gpt_oss_lb_config_reload_failures_total")
    (lb.dir / "lb.yaml").write_text(yaml)
    os.kill(lb.proc.pid, signal.SIGHUP)
    deadline = time.time() + 30
    while metric(lb, "gpt_oss_lb_config_reload_failures_total") <= before:
        assert time.time() < deadline
        time.sleep(0.05)
    assert "plugins[8] (not-a-filter)" in lb.log_path.read_text()
    assert "not-a-filter" not in [p["name"] for p in lb.status()["filter_chain"]]
    reload(lb, config())
