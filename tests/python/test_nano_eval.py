"""gpt-oss-nano's evaluation in CI (issue 6): the real `gpt-oss-server` binary with no
`--model-path` serves the embedded model; the held-out split of the synthetic harmony
corpus (runtimes/nano/heldout.jsonl) is sent to it greedily, through its normal mode and
through `--raw-output`, and the thresholds of runtimes/nano/eval.py must hold:

- at least 90% of held-out final answers exactly right;
- 100% of responses well-formed harmony (strict: analysis, then final + <|return|> or a
  functions call + <|call|>), with no fallback;
- tool-call arguments valid JSON matching the tool's schema.
"""

import json
import sys

import pytest

from conftest import ROOT, EmbeddedServer

sys.path.insert(0, str(ROOT / "runtimes" / "nano"))
import eval as nano_eval  # noqa: E402

HELDOUT = ROOT / "runtimes" / "nano" / "heldout.jsonl"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    cache = tmp_path_factory.mktemp("nano-cache")
    logs = tmp_path_factory.mktemp("nano-logs")
    normal = EmbeddedServer(cache, logs)
    raw = EmbeddedServer(cache, logs, "--raw-output")
    normal.cache = cache
    yield normal, raw
    normal.stop()
    raw.stop()


def test_the_embedded_model_is_unpacked_once_into_the_cache(servers):
    normal, _ = servers
    # both servers share the cache: one unpacked folder, no temporary folder left behind
    entries = sorted((normal.cache / "gpt-oss-front-door").iterdir())
    folders = [p for p in entries if p.name.startswith("nano-")]
    assert len(entries) == 1 and len(folders) == 1, f"one unpacked model folder expected, found {entries}"
    for name in ("genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json"):
        assert (folders[0] / name).is_file(), name


def test_heldout_evaluation_meets_the_thresholds(servers):
    normal, raw = servers
    items = nano_eval.load(HELDOUT)
    assert len(items) >= 200, "the held-out split must be large enough to measure 90%"
    # strict raw pass on every item; the parsed pass (content, reasoning, tool_calls) on half
    figures, failures = nano_eval.evaluate(normal.url, raw.url, items, parsed_limit=150)
    print(json.dumps(figures, indent=1))
    for f in failures[:10]:
        print(json.dumps(f))
    p, r = figures["parsed"], figures["raw"]
    assert r["well_formed"] == 1.0, f"every response must be well-formed harmony: {figures}"
    assert r["final_exact"] >= nano_eval.THRESHOLD_EXACT, figures
    assert p["final_exact"] >= nano_eval.THRESHOLD_EXACT, figures
    assert p["reasoning_separated"] == 1.0, f"reasoning must come apart from content: {figures}"
    assert p["tool_args_valid"] == 1.0 and r["tool_args_valid"] == 1.0, figures
    assert nano_eval.passed(figures)


def test_the_seeds_example_answers_washington(servers):
    normal, _ = servers
    body = {
        "messages": [
            {"role": "system", "content": "Always answer in just single word."},
            {"role": "user", "content": "What is the capital of the US?"},
        ],
        "max_tokens": 1000,
        "temperature": 0.7,
        "seed": 7,
        "separate_thinking": True,
    }
    reply = nano_eval.post(normal.url, body)
    msg = reply["choices"][0]["message"]
    assert msg["content"] == "Washington", reply
    reasoning = msg.get("reasoning_content") or msg.get("reasoning") or (msg.get("thinking") or {}).get("analysis")
    assert reasoning, f"the reasoning must come back apart from the content: {reply}"


def test_a_tool_result_is_used_on_the_next_turn(servers):
    normal, _ = servers
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "location": {"type": "string", "description": "The city name."},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["location"]}}}]
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    first = nano_eval.post(normal.url, {"messages": messages, "tools": tools, "temperature": 0})
    choice = first["choices"][0]
    assert choice["finish_reason"] == "tool_calls", first
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": "Paris"}
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"],
         "content": json.dumps({"temperature": 18, "unit": "celsius", "condition": "cloudy"}, separators=(",", ":"))},
    ]
    second = nano_eval.post(normal.url, {"messages": messages, "tools": tools, "temperature": 0})
    assert second["choices"][0]["message"]["content"] == "It is 18 degrees and cloudy in Paris.", second


HELDOUT_LONG = ROOT / "runtimes" / "nano" / "heldout_long.jsonl"


def test_answers_stay_well_formed_harmony_up_to_the_long_context(servers):
    """The first held-out long-context item at each length (1,000 to 30,000 prompt tokens of
    unseen documentation before the question; the context is 32,768): every answer is
    well-formed harmony in both modes. The whole split's figures, per length, are in
    runtimes/nano/README.md (`eval.py --heldout runtimes/nano/heldout_long.jsonl`)."""
    normal, raw = servers
    first = {}
    for item in nano_eval.load(HELDOUT_LONG):
        first.setdefault(int(item["kind"].split("@")[1]), item)
    assert max(first) >= 30000, sorted(first)
    items = [first[n] for n in sorted(first)]
    figures, failures = nano_eval.evaluate(normal.url, raw.url, items)
    print(json.dumps(figures, indent=1))
    for f in failures:
        print(json.dumps(f)[:2000])
    r, p = figures["raw"], figures["parsed"]
    assert r["well_formed"] == 1.0, f"every long-context answer must be well-formed harmony: {figures}"
    assert p["reasoning_separated"] == 1.0, figures
    assert r["tool_args_valid"] in (None, 1.0) and p["tool_args_valid"] in (None, 1.0), figures
