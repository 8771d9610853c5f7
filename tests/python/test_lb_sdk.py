"""The official OpenAI Python SDK against gpt-oss-lb in front of real gpt-oss-server processes
(a parsed-mode backend, and a raw-mode backend rewritten at the edge)."""

import json

import openai
import pytest

from conftest import Lb, Server


@pytest.fixture(scope="module")
def lb(model_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("lb")
    parsed = Server(model_dir, "--model-name", "tiny", log_dir=logs)
    raw = Server(model_dir, "--model-name", "tiny-raw", "--raw-output", log_dir=logs)
    cfg = f"""
health_check: {{interval: 300ms, timeout: 300ms}}
backends:
  - {{name: parsed, url: "{parsed.url}", model_type: openai, models: [tiny]}}
  - {{name: raw, url: "{raw.url}", model_type: gpt-oss, models: [tiny-raw]}}
"""
    lb = Lb(cfg, logs)
    lb.wait_healthy(["parsed", "raw"])
    yield lb
    lb.stop()
    parsed.stop()
    raw.stop()


MESSAGES = [{"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "What is the capital of the US?"}]


def test_models_list_through_the_lb(lb):
    ids = sorted(m.id for m in lb.client().models.list())
    assert ids == ["tiny", "tiny-raw"]


def test_chat_and_stream_through_the_lb(lb):
    c = lb.client()
    r = c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16, temperature=0, seed=1)
    assert r.choices[0].finish_reason in ("stop", "length")
    text = "".join(
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16,
                                            temperature=0, seed=1, stream=True)
        if ch.choices
    )
    assert text == (r.choices[0].message.content or "")


def test_raw_backend_rewritten_at_the_edge_equals_the_parsed_one(lb):
    c = lb.client()
    kw = dict(messages=MESSAGES, max_tokens=40, temperature=0, seed=3, extra_body={"separate_thinking": True})
    want = c.chat.completions.create(model="tiny", **kw).choices[0].message.model_dump()
    got = c.chat.completions.create(model="tiny-raw", **kw).choices[0].message.model_dump()
    for field in ("content", "reasoning_content", "tool_calls", "thinking"):
        assert got.get(field) == want.get(field), field
    assert "<|channel|>" not in json.dumps(got)


def test_unknown_model_is_a_not_found_error_listing_models(lb):
    with pytest.raises(openai.NotFoundError) as e:
        lb.client().chat.completions.create(model="gpt-5", messages=MESSAGES)
    assert "tiny" in str(e.value)
