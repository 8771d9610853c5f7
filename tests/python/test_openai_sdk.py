"""The official OpenAI Python SDK against gpt-oss-server on the tiny fixture model."""

import json

import openai
import pytest

MESSAGES = [
    {"role": "system", "content": "Always answer in just single word."},
    {"role": "user", "content": "What is the capital of the US?"},
]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_models_list(server):
    client = server.client()
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == ["gpt-oss-20b"]
    model = client.models.retrieve("gpt-oss-20b")
    assert model.id == "gpt-oss-20b" and model.object == "model"


def test_chat_completion_without_streaming(server):
    client = server.client()
    r = client.chat.completions.create(
        model="gpt-oss-20b", messages=MESSAGES, max_tokens=16, temperature=0.7,
        extra_body={"separate_thinking": True},
    )
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # The seed's thinking_tokens and OpenAI's reasoning_tokens say the same.
    assert r.usage.completion_tokens_details.reasoning_tokens == r.usage.model_extra["thinking_tokens"]
    extra = choice.message.model_extra or {}
    assert extra["parsed"]["developer_instructions"] == "Always answer in just single word."
    assert "thinking" in extra


def test_streaming_matches_non_streaming_under_a_seed(server):
    client = server.client()
    kw = dict(model="gpt-oss-20b", messages=MESSAGES, max_tokens=20, temperature=0.9, seed=42)
    whole = client.chat.completions.create(**kw)
    stream = client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    content, reasoning, finish, usage, roles = "", "", None, None, []
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            content += c.delta.content or ""
            reasoning += (c.delta.model_extra or {}).get("reasoning_content") or ""
            finish = c.finish_reason or finish
    assert roles[:1] == ["assistant"]
    msg = whole.choices[0].message
    assert content == (msg.content or "")
    assert reasoning == ((msg.model_extra or {}).get("reasoning_content") or "")
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_tools_round_trip(server):
    client = server.client()
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(
        model="gpt-oss-20b", messages=messages, tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=12, temperature=0,
    )
    choice = r.choices[0]
    assert choice.finish_reason in ("tool_calls", "length")
    calls = choice.message.tool_calls
    assert calls and calls[0].type == "function" and calls[0].function.name == "get_weather"
    assert calls[0].id.startswith("call_")
    messages.append({
        "role": "assistant", "content": None,
        "tool_calls": [{"id": calls[0].id, "type": "function",
                        "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}],
    })
    messages.append({"role": "tool", "tool_call_id": calls[0].id, "content": json.dumps({"temperature_c": 21})})
    r2 = client.chat.completions.create(model="gpt-oss-20b", messages=messages, tools=[WEATHER], max_tokens=8)
    assert r2.choices[0].message.role == "assistant"

    # The same forced call, streamed as tool_call deltas.
    stream = client.chat.completions.create(
        model="gpt-oss-20b", messages=messages[:1], tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=12, temperature=0, stream=True,
    )
    names = [tc.function.name for ch in stream for c in ch.choices for tc in (c.delta.tool_calls or [])
             if tc.function and tc.function.name]
    assert names == ["get_weather"]


def test_min_tokens_holds_off_stop_tokens_and_stop_strings(server):
    """vLLM's `min_tokens`, sent as the SDK sends extensions (`extra_body`)."""
    client = server.client()
    story = [{"role": "user", "content": "Write a very long story."}]
    kw = dict(model="gpt-oss-20b", messages=story, max_tokens=600, temperature=0)
    plain = client.chat.completions.create(**kw)
    assert plain.choices[0].finish_reason == "stop"
    n = plain.usage.completion_tokens
    assert n < 500, "the tiny model ends this greedy story by itself"
    held = client.chat.completions.create(extra_body={"min_tokens": n + 50}, **kw)
    assert held.usage.completion_tokens >= n + 50

    # A stop string in the text of the first min_tokens tokens does not end the completion.
    kw = dict(model="gpt-oss-20b", prompt="The capital", max_tokens=30, temperature=0)
    text = client.completions.create(**kw).choices[0].text
    stop = text[:12].split()[-1]
    early = client.completions.create(stop=[stop], **kw).choices[0]
    assert early.finish_reason == "stop" and stop not in early.text
    late = client.completions.create(stop=[stop], extra_body={"min_tokens": 20}, **kw)
    assert late.choices[0].text.startswith(text[: text.index(stop) + len(stop)])
    assert late.usage.completion_tokens >= 20

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="gpt-oss-20b", messages=story, max_tokens=600, extra_body={"min_tokens": 700})
    assert e.value.body["param"] == "min_tokens"


def test_bad_request_error_names_the_field(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-oss-20b", messages=MESSAGES, temperature=5)
    assert e.value.status_code == 400
    assert e.value.body["param"] == "temperature"
    assert "`temperature`" in e.value.message


def test_not_found_error_for_an_unknown_model(server):
    client = server.client()
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-9", messages=MESSAGES, max_tokens=4)
    assert e.value.status_code == 404
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")


def test_rate_limit_error_when_the_queue_is_full(busy_server):
    client = busy_server.client()
    holder = client.chat.completions.create(
        model="gpt-oss-20b", messages=[{"role": "user", "content": "Write a very long story."}],
        max_tokens=3000, temperature=0, stream=True,
        extra_body={"min_tokens": 3000},  # the tiny model would end this story in about a second
    )
    first = next(iter(holder))  # the slot is now taken
    assert first.choices[0].delta.role == "assistant"
    try:
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model="gpt-oss-20b", messages=MESSAGES, max_tokens=4)
        assert e.value.status_code == 429
        assert e.value.response.headers.get("retry-after") is not None
    finally:
        holder.close()


def test_authentication_error_with_a_wrong_key(keyed_server):
    with pytest.raises(openai.AuthenticationError):
        keyed_server.client(api_key="sk-wrong").models.list()
    assert [m.id for m in keyed_server.client(api_key="sk-test-key").models.list().data] == ["gpt-oss-20b"]
