"""The LB conformance matrix: what a client gets through gpt-oss-lb equals what it gets from
gpt-oss-server directly, for every kind of backend and registration, streamed and not, with
and without tools, with `separate_thinking` on and off, with and without `stop` strings.

Real binaries on the embedded gpt-oss-nano (no `--model-path`: it writes an analysis, then a
final answer, and calls `get_weather`), greedy (`temperature: 0`) under a fixed `seed`, so
the same request gives the same tokens on every server. Backends, each its own process
(the server serves one model name, the LB routes by model):

- `parsed`: gpt-oss-server with default flags, registered with no `model_type` (the
  default, `gpt-oss`, as `scripts/demo` and the README register it);
- `parsed-openai`: the same server registered as `model_type: openai`; an OpenAI-type
  backend (parsed `content`, `reasoning_content`, `tool_calls`) is exactly this;
- `raw`: gpt-oss-server `--raw-output` registered as `gpt-oss` (raw harmony registered as
  `openai` would reach clients unparsed: not a configuration).

Every answer through the LB is compared with the `parsed` server's direct answer to the same
request: the parsed servers are the same binary, model and flags, so it is what each of them
answers directly (checked once below), and for `raw` it is what the LB's edge rewriting must
give.

Compared: `content`, `reasoning_content`, `reasoning`, `commentary`, tool calls (name and
arguments; ids may differ), the seed's `thinking` / `parsed` with `separate_thinking`,
`finish_reason` and `usage`; for streams the concatenation of each field's deltas, the order
of chunk kinds (role, reasoning, content, tool call, finish, usage) and the number of chunks
that carried reasoning, content and tool-call text.

Then the official SDKs through the LB: the Python SDK's `chat.completions.stream()` and the
Node SDK's `runTools` (tests/node, installed by scripts/setup) must end with the tool called,
as they do against the server directly.
"""

import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from conftest import ROOT, EmbeddedServer, Lb

NODE_DIR = ROOT / "tests" / "node"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}
TOOL_MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
# Without tools: a question whose reasoning and answer both contain the stop string.
PLAIN_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
STOP = "ris"
SEED = 7
MAX_TOKENS = 64

# backend name -> (server flags, model_type to register (None: the default))
BACKENDS = {
    "parsed": ((), None),
    "parsed-openai": ((), "openai"),
    "raw": (("--raw-output",), "gpt-oss"),
}
# the server whose direct answers are the reference
REFERENCE = "parsed"


class Setup:
    def __init__(self, servers, lb):
        self.servers = servers
        self.lb = lb
        self.http = httpx.Client(timeout=120)
        self.direct_cache = {}
        self.node_cache = {}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cache = tmp_path_factory.mktemp("nano-cache")
    logs = tmp_path_factory.mktemp("conformance-logs")
    servers = {}
    lb = None

    def start(name):
        servers[name] = EmbeddedServer(cache, logs, "--model-name", f"nano-{name}", *BACKENDS[name][0])

    try:
        # the first one unpacks the embedded model into the cache; the others start together
        names = list(BACKENDS)
        start(names[0])
        with ThreadPoolExecutor(len(names) - 1) as pool:
            for f in [pool.submit(start, n) for n in names[1:]]:
                f.result()
        lb = Lb("health_check: {interval: 300ms, timeout: 300ms}\nbackends: []\n", logs)
        for name, (_, model_type) in BACKENDS.items():
            body = {"name": name, "url": servers[name].url, "models": [f"nano-{name}"]}
            if model_type:
                body["model_type"] = model_type
            lb.register(body)
        lb.wait_healthy(list(BACKENDS))
        kinds = {b["name"]: b["model_type"] for b in lb.status()["backends"]}
        assert kinds == {"parsed": "gpt-oss", "parsed-openai": "openai", "raw": "gpt-oss"}, kinds
        s = Setup(servers, lb)
        yield s
        s.http.close()
    finally:
        if lb:
            lb.stop()
        for server in servers.values():
            server.stop()


def request_body(backend, stream, tools, separate_thinking, stop):
    body = {
        "model": f"nano-{backend}",
        "messages": TOOL_MESSAGES if tools else PLAIN_MESSAGES,
        "temperature": 0,
        "seed": SEED,
        "max_tokens": MAX_TOKENS,
        "separate_thinking": separate_thinking,
    }
    if tools:
        body["tools"] = [WEATHER_TOOL]
    if stop:
        body["stop"] = STOP
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def sse_payloads(text):
    """The JSON payloads of an SSE body, and whether it ended with `data: [DONE]`."""
    out, done = [], False
    for line in text.splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            continue
        out.append(json.loads(data))
    return out, done


def chunk_kinds(chunk):
    """What one stream chunk carries, in a fixed order."""
    if not chunk.get("choices"):
        return ["usage"] if chunk.get("usage") else ["empty"]
    kinds = []
    choice = chunk["choices"][0]
    d = choice.get("delta") or {}
    if d.get("role"):
        kinds.append("role")
    for field, kind in (("reasoning_content", "reasoning"), ("commentary", "commentary"), ("content", "content")):
        if d.get(field):
            kinds.append(kind)
    if d.get("tool_calls"):
        kinds.append("tool_call")
    if d.get("thinking") or d.get("parsed"):
        kinds.append("seed_fields")
    if choice.get("finish_reason"):
        kinds.append("finish")
    return kinds


# the kinds of chunk that carry generated text, one piece at a time
STREAMED_KINDS = ("reasoning", "commentary", "content", "tool_call")


def summarize_stream(text):
    """A stream as the fields a client assembles from it, the order of chunk kinds (repeats in
    a row collapsed: the role may share a chunk with the first delta, the seed's fields with the
    finish), and how many chunks carried each kind of text (an answer that arrives in one chunk
    at the end is not a stream)."""
    chunks, done = sse_payloads(text)
    errors = [c for c in chunks if "error" in c]
    fields = {f: "" for f in ("content", "reasoning_content", "reasoning", "commentary")}
    calls = {}
    finish, usage, seed_fields = [], None, {}
    order = []
    deltas = {}
    for c in chunks:
        for k in chunk_kinds(c):
            if not order or order[-1] != k:
                order.append(k)
            if k in STREAMED_KINDS:
                deltas[k] = deltas.get(k, 0) + 1
        if c.get("usage"):
            usage = c["usage"]
        for choice in c.get("choices") or []:
            d = choice.get("delta") or {}
            for f in fields:
                fields[f] += d.get(f) or ""
            for tc in d.get("tool_calls") or []:
                call = calls.setdefault(tc.get("index", 0), {"name": "", "arguments": ""})
                fn = tc.get("function") or {}
                call["name"] += fn.get("name") or ""
                call["arguments"] += fn.get("arguments") or ""
            for f in ("thinking", "parsed"):
                if d.get(f) is not None:
                    seed_fields[f] = d[f]
            if choice.get("finish_reason"):
                finish.append(choice["finish_reason"])
    return {
        **fields,
        "tool_calls": [calls[i] for i in sorted(calls)],
        **seed_fields,
        "finish_reason": finish,
        "usage": usage,
        "chunk_order": order,
        "deltas": deltas,
        "done": done,
        "errors": errors,
    }


def summarize_json(reply):
    choice = reply["choices"][0]
    msg = choice["message"]
    out = {f: msg.get(f) or "" for f in ("content", "reasoning_content", "reasoning", "commentary")}
    out["tool_calls"] = [
        {"name": tc["function"]["name"], "arguments": tc["function"]["arguments"]} for tc in msg.get("tool_calls") or []
    ]
    for f in ("thinking", "parsed"):
        if msg.get(f) is not None:
            out[f] = msg[f]
    out["finish_reason"] = [choice["finish_reason"]]
    out["usage"] = reply.get("usage")
    return out


def ask(http, url, body):
    r = http.post(url + "/v1/chat/completions", json=body)
    assert r.status_code == 200, f"{url}: {r.status_code} {r.text}"
    if body.get("stream"):
        assert r.headers["content-type"].startswith("text/event-stream"), r.headers
        return summarize_stream(r.text)
    return summarize_json(r.json())


def direct(setup, case):
    """The reference server's direct answer (cached: the same request gives the same answer)."""
    if case not in setup.direct_cache:
        body = request_body(REFERENCE, *case)
        setup.direct_cache[case] = ask(setup.http, setup.servers[REFERENCE].url, body)
    return setup.direct_cache[case]


CASES = [
    (stream, tools, separate_thinking, stop)
    for tools in (True, False)
    for stream in (True, False)
    for separate_thinking in (False, True)
    for stop in (False, True)
]


def case_id(case):
    stream, tools, sep, stop = case
    return "-".join([
        "stream" if stream else "json",
        "tools" if tools else "plain",
        "sep" if sep else "nosep",
        "stop" if stop else "nostop",
    ])


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_through_the_lb_equals_direct(setup, backend, case):
    want = direct(setup, case)
    stream, tools, _, _ = case
    # the matrix means something only where the model does what the case is about
    if tools:
        assert [c["name"] for c in want["tool_calls"]] == ["get_weather"], want
        assert want["finish_reason"] == ["tool_calls"], want
    else:
        assert want["content"] and want["reasoning_content"], want
    if stream:
        assert want["done"] and not want["errors"], want
    # the stop string is in the reasoning of both prompts ("Paris"): it must not cut it
    assert STOP in want["reasoning_content"], want

    got = ask(setup.http, setup.lb.url, request_body(backend, *case))
    assert got == want, f"through the LB ({backend}) != direct: {differences(got, want)}"


def differences(got, want):
    """The fields that differ, both ways, as one JSON text for the assertion message."""
    keys = sorted(set(got) | set(want))
    return json.dumps({k: {"lb": got.get(k), "direct": want.get(k)} for k in keys if got.get(k) != want.get(k)})


def test_raw_server_matches_stop_strings_on_the_answer(setup):
    """A `--raw-output` server ends its raw text where the parsed server's answer ends: the
    reasoning (which has the stop string too) stays whole."""
    body = request_body("raw", False, False, False, True)
    raw = setup.http.post(setup.servers["raw"].url + "/v1/chat/completions", json=body).json()
    parsed = direct(setup, (False, False, False, True))
    text = raw["choices"][0]["message"]["content"]
    assert text.startswith("<|channel|>analysis<|message|>" + parsed["reasoning_content"] + "<|end|>"), text
    assert text.endswith("<|channel|>final<|message|>" + parsed["content"]), text
    assert STOP not in parsed["content"]
    assert raw["choices"][0]["finish_reason"] == "stop"
    assert raw["usage"] == parsed["usage"]


@pytest.mark.parametrize("case", [(True, True, True, False), (False, False, True, True)], ids=case_id)
def test_parsed_servers_answer_alike_directly(setup, case):
    """The premise of the reference: another parsed server gives the same answer directly."""
    body = request_body("parsed-openai", *case)
    assert ask(setup.http, setup.servers["parsed-openai"].url, body) == direct(setup, case)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_python_sdk_stream_finishes_with_the_tool_call(setup, backend):
    def run(url, model):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        with client.chat.completions.stream(
            model=model, messages=TOOL_MESSAGES, tools=[WEATHER_TOOL],
            temperature=0, seed=SEED, max_tokens=MAX_TOKENS,
        ) as stream:
            events = [e.type for e in stream]
            final = stream.get_final_completion()
        choice = final.choices[0]
        calls = [(c.function.name, c.function.parsed_arguments or json.loads(c.function.arguments))
                 for c in choice.message.tool_calls or []]
        return {"finish_reason": choice.finish_reason, "calls": calls,
                "tool_call_done": "tool_calls.function.arguments.done" in events}

    # the same request straight to the reference server shows what the SDK must end with
    want = run(setup.servers[REFERENCE].url, f"nano-{REFERENCE}")
    assert want == {"finish_reason": "tool_calls", "calls": [("get_weather", {"location": "Paris"})],
                    "tool_call_done": True}, want
    got = run(setup.lb.url, f"nano-{backend}")
    assert got == want, f"through the LB ({backend})"


def node_run_tools(url, model, mode):
    node = shutil.which("node")
    assert node, "node is not installed (scripts/setup needs node 20+ and npm)"
    assert (NODE_DIR / "node_modules" / "openai").is_dir(), "run scripts/setup (npm ci in tests/node)"
    p = subprocess.run([node, str(NODE_DIR / "run_tools.mjs"), url + "/v1", model, mode],
                       capture_output=True, text=True, timeout=120, cwd=NODE_DIR)
    assert p.returncode == 0, f"runTools ({mode}) failed against {url}: {p.stderr}"
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["stream", "json"])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_node_sdk_run_tools_calls_the_tool_and_answers(setup, backend, mode):
    if mode not in setup.node_cache:
        setup.node_cache[mode] = node_run_tools(setup.servers[REFERENCE].url, f"nano-{REFERENCE}", mode)
    want = setup.node_cache[mode]
    assert [c["name"] for c in want["calls"]] == ["get_weather"], want
    assert json.loads(want["calls"][0]["arguments"]) == {"location": "Paris"}, want
    assert want["finish_reasons"] == ["tool_calls", "stop"] and want["content"], want
    got = node_run_tools(setup.lb.url, f"nano-{backend}", mode)
    assert got == want, f"runTools ({mode}) through the LB ({backend})"
