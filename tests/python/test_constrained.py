"""Constrained decoding on the embedded gpt-oss-nano at temperature 0.7, through the official
OpenAI Python SDK: every answer must validate, 50 requests per kind (every other one streamed),
sent to gpt-oss-server directly and through gpt-oss-lb (the server registered as `scripts/demo`
registers it: the default `model_type`, gpt-oss).

A tiny model is the hardest test a grammar can get: without the token mask nano answers
prose ("The capital of France is Paris.") to a schema, and names arguments as it likes.
"""

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Annotated, List

import openai
import pydantic
import pytest

from conftest import Lb
from test_nano_eval import EmbeddedServer

COUNT = 50
# Requests in flight at once (the server's --max-concurrent too): the runtime decodes them in
# one batch, so the requests through both paths cost little more than one path's alone.
WORKERS = 16
# Room for an analysis and a long answer: nano at temperature 0.7 sometimes writes long strings
# into a schema's free-text fields (1 in 100 answers passed 200 tokens in CI and was cut).
MAX_TOKENS = 400


@pytest.fixture(scope="module")
def nano(tmp_path_factory):
    s = EmbeddedServer(tmp_path_factory.mktemp("nano-cache"), tmp_path_factory.mktemp("nano-logs"),
                       "--max-concurrent", str(WORKERS))
    s.client = lambda: openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0,
                                     timeout=300)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def lb(nano, tmp_path_factory):
    lb = Lb("health_check: {interval: 300ms, timeout: 300ms}\nbackends: []\n",
            tmp_path_factory.mktemp("lb"))
    lb.register({"name": "nano", "url": nano.url, "models": ["gpt-oss-20b"]})
    lb.wait_healthy(["nano"])
    kinds = [b["model_type"] for b in lb.status()["backends"]]
    assert kinds == ["gpt-oss"], kinds
    yield lb
    lb.stop()


@pytest.fixture
def paths(nano, lb):
    """The two ways to the model that the 50-request checks take: directly and through the LB."""
    return {"server": nano, "lb": lb}


@pytest.fixture(params=["server", "lb"])
def endpoint(request, nano):
    """Where the requests go: gpt-oss-server itself, or gpt-oss-lb in front of it."""
    return nano if request.param == "server" else request.getfixturevalue("lb")


class Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)


class Capital(Strict):
    country: str = pydantic.Field(max_length=40)
    capital: str = pydantic.Field(max_length=40)


class Color(str, Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Coordinates(Strict):
    lat: float = pydantic.Field(ge=-90, le=90)
    lon: float = pydantic.Field(ge=-180, le=180)


class City(Strict):
    name: str = pydantic.Field(max_length=40)
    location: Coordinates
    color: Color


class Trip(Strict):
    cities: List[City] = pydantic.Field(max_length=3)
    days: int = pydantic.Field(ge=1, le=60)
    confirmed: bool


QUESTIONS = ["What is the capital of France?", "What is the capital of Japan?",
             "What is the weather in Paris?", "Tell me about Oslo.", "What is 2+2?"]

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city", "strict": True,
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Adds two integers", "strict": True,
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"], "additionalProperties": False}}}
LOOSE = {"type": "function", "function": {"name": "lookup", "description": "Looks something up",
                                          "parameters": {"type": "object"}}}


class Unit(str, Enum):
    celsius = "celsius"
    fahrenheit = "fahrenheit"


class WeatherArgs(Strict):
    city: str
    unit: str = pydantic.Field(pattern="^(celsius|fahrenheit)$")


class AddArgs(Strict):
    a: int
    b: int


ARGS = {"get_weather": WeatherArgs, "add": AddArgs}


def _messages(i):
    return [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]


def _complete(client, i, **kw):
    """One request (streamed when i is odd): the message's content, tool calls and finish reason."""
    kw = dict(model="gpt-oss-20b", messages=_messages(i), temperature=0.7, max_tokens=MAX_TOKENS,
              extra_body={"reasoning_effort": "low"}, **kw)
    if i % 2 == 0:
        r = client.chat.completions.create(**kw)
        m = r.choices[0].message
        calls = [(c.function.name, c.function.arguments) for c in m.tool_calls or []]
        return m.content, calls, r.choices[0].finish_reason
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(stream=True, **kw):
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        content += d.content or ""
        for c in d.tool_calls or []:
            entry = calls.setdefault(c.index, ["", ""])
            entry[0] += (c.function.name or "") if c.function else ""
            entry[1] += (c.function.arguments or "") if c.function else ""
        finish = chunk.choices[0].finish_reason or finish
    return content or None, [tuple(v) for _, v in sorted(calls.items())], finish


def _all(paths, fn):
    """`fn(client, i)` for `COUNT` values of i on every path, all paths at once (the server
    batches them): a list of (path, result)."""
    jobs = [(name, path.client(), i) for name, path in paths.items() for i in range(COUNT)]
    with ThreadPoolExecutor(WORKERS) as ex:
        return list(ex.map(lambda job: (job[0], fn(job[1], job[2])), jobs))


def _report(results, ok):
    """Every result of every path satisfies `ok`."""
    sent = {name: 0 for name, _ in results}
    for name, _ in results:
        sent[name] += 1
    assert all(n == COUNT for n in sent.values()), sent
    bad = [(name, r) for name, r in results if not ok(r)]
    assert not bad, f"{len(bad)} of {len(results)} answers do not validate, e.g. {bad[:3]}"


@pytest.mark.parametrize("model", [Capital, City, Trip])
def test_strict_json_schema_always_validates(paths, model):
    fmt = openai.lib._parsing._completions.type_to_response_format_param(model)

    def ok(r):
        content, calls, finish = r
        try:
            model.model_validate_json(content)
        except (pydantic.ValidationError, TypeError):
            return False
        return finish == "stop" and not calls

    _report(_all(paths, lambda client, i: _complete(client, i, response_format=fmt)), ok)


def test_parse_returns_a_pydantic_object(endpoint):
    client = endpoint.client()
    r = client.chat.completions.parse(model="gpt-oss-20b", messages=_messages(0), temperature=0.7,
                                      max_tokens=MAX_TOKENS, response_format=Capital,
                                      extra_body={"reasoning_effort": "low"})
    assert isinstance(r.choices[0].message.parsed, Capital), r


def test_json_object_always_parses(paths):

    def ok(r):
        content, calls, finish = r
        try:
            return isinstance(json.loads(content), dict) and finish == "stop"
        except (json.JSONDecodeError, TypeError):
            return False

    fmt = {"type": "json_object"}
    _report(_all(paths, lambda client, i: _complete(client, i, response_format=fmt)), ok)


def _valid_call(calls, names):
    if len(calls) != 1:
        return False
    name, arguments = calls[0]
    if name not in names:
        return False
    try:
        if name in ARGS:
            ARGS[name].model_validate_json(arguments)
        else:
            assert isinstance(json.loads(arguments), dict)
    except (pydantic.ValidationError, json.JSONDecodeError, AssertionError):
        return False
    return True


def test_tool_choice_required_always_calls_an_offered_function(paths):
    tools = [WEATHER, ADD, LOOSE]
    results = _all(paths, lambda client, i: _complete(client, i, tools=tools,
                                                      tool_choice="required"))
    _report(results, lambda r: _valid_call(r[1], {"get_weather", "add", "lookup"}) and r[2] == "tool_calls")


def test_a_named_function_is_always_called_with_valid_arguments(paths):
    named = {"type": "function", "function": {"name": "add"}}
    results = _all(paths, lambda client, i: _complete(client, i, tools=[WEATHER, ADD],
                                                      tool_choice=named))
    _report(results, lambda r: _valid_call(r[1], {"add"}) and r[2] == "tool_calls")


def test_strict_tool_arguments_match_their_schema(paths):
    results = _all(paths, lambda client, i: _complete(client, i, tools=[WEATHER]))

    def ok(r):
        content, calls, finish = r
        if calls:
            return _valid_call(calls, {"get_weather"}) and finish == "tool_calls"
        return isinstance(content, str) and finish == "stop"

    _report(results, ok)
    assert any(r[1] for _, r in results), "the weather questions should call the tool sometimes"


def test_tool_choice_none_never_calls(paths):
    results = _all(paths, lambda client, i: _complete(client, i, tools=[WEATHER, ADD],
                                                      tool_choice="none"))
    _report(results, lambda r: not r[1] and isinstance(r[0], str) and r[2] == "stop")


def test_an_unsupported_schema_keyword_is_a_400_naming_it(endpoint):
    client = endpoint.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="gpt-oss-20b", messages=_messages(0), max_tokens=8,
            response_format={"type": "json_schema", "json_schema": {
                "name": "x", "strict": True,
                "schema": {"type": "array", "unevaluatedItems": False}}})
    assert e.value.body["param"] == "response_format.json_schema.schema"
    assert "unevaluatedItems" in e.value.body["message"]


PROMPTS = ["The capital of France is", "Describe a city as JSON:", "Weather report for Oslo:",
           "2 + 2 =", "Once upon a time"]


def _complete_raw(client, i, response_format):
    """One `/v1/completions` request (streamed when i is odd): its text and finish reason.

    A bare `json_object` bounds neither keys nor values (see MAX_TOKENS)."""
    kw = dict(model="gpt-oss-20b", prompt=PROMPTS[i % len(PROMPTS)], temperature=0.7,
              max_tokens=MAX_TOKENS, extra_body={"response_format": response_format})
    if i % 2 == 0:
        r = client.completions.create(**kw)
        return r.choices[0].text, r.choices[0].finish_reason
    text, finish = "", None
    for chunk in client.completions.create(stream=True, **kw):
        for c in chunk.choices:
            text += c.text
            finish = c.finish_reason or finish
    return text, finish


def is_json_prefix(text):
    """Whether `text` is the start of some JSON text: what a grammar-constrained answer that
    `max_tokens` cut (`finish_reason: "length"`) must be. OpenAI documents that such an answer
    may be incomplete JSON; it must never be wrong JSON."""

    class End(Exception):
        pass

    full_number = re.compile(r"-?(0|[1-9][0-9]*)([.][0-9]+)?([eE][+-]?[0-9]+)?")
    number_start = re.compile(r"-?((0|[1-9][0-9]*)([.][0-9]*)?([eE][+-]?[0-9]*)?)?")
    i, n = 0, len(text)

    def peek():
        if i >= n:
            raise End
        return text[i]

    def ws():
        nonlocal i
        while i < n and text[i] in " \t\r\n":
            i += 1

    def lit(word):
        nonlocal i
        for ch in word:
            if peek() != ch:
                raise ValueError(i)
            i += 1

    def string():
        nonlocal i
        lit('"')
        while True:
            c = peek()
            i += 1
            if c == '"':
                return
            if c == "\\":
                e = peek()
                i += 1
                if e == "u":
                    for _ in range(4):
                        if peek() not in "0123456789abcdefABCDEF":
                            raise ValueError(i)
                        i += 1
                elif e not in '"\\/bfnrt':
                    raise ValueError(i)
            elif ord(c) < 0x20:
                raise ValueError(i)

    def number():
        nonlocal i
        j = i
        while j < n and text[j] in "-+.eE0123456789":
            j += 1
        token, i = text[i:j], j
        if i >= n:
            if not number_start.fullmatch(token):
                raise ValueError(i)
            raise End
        if not full_number.fullmatch(token):
            raise ValueError(i)

    def members(close, item):
        nonlocal i
        i += 1
        ws()
        if peek() == close:
            i += 1
            return
        while True:
            ws()
            item()
            ws()
            c = peek()
            i += 1
            if c == close:
                return
            if c != ",":
                raise ValueError(i)

    def pair():
        string()
        ws()
        lit(":")
        value()

    def value():
        ws()
        c = peek()
        if c == "{":
            members("}", pair)
        elif c == "[":
            members("]", value)
        elif c == '"':
            string()
        elif c in "tfn":
            lit({"t": "true", "f": "false", "n": "null"}[c])
        else:
            number()

    try:
        value()
        ws()
        return i == n
    except End:
        return True
    except ValueError:
        return False


def test_the_json_prefix_check_tells_cut_json_from_wrong_json():
    for cut in ['{"a": 1', '{"a": [tr', '{"k": "x\\u00', '{"n": -12.5e', '{', '{"a": {"b": null}, ']:
        assert is_json_prefix(cut), cut
    for wrong in ['{"a": 1}}', '{"a" 1', '{"a": 01', '{"a": tru }', '{"a": "x\\q"', '{,']:
        assert not is_json_prefix(wrong), wrong


@pytest.mark.parametrize("kind", ["json_object", "json_schema"])
def test_completions_response_format_always_validates(paths, kind):
    """A raw prompt has no harmony channels: the whole completion text is the JSON. On a raw
    prompt nano at temperature 0.7 can write one number for hundreds of tokens (a bare
    `json_object` bounds neither keys nor values): an answer `max_tokens` cut must be the start
    of valid JSON, every other answer valid JSON of the format, and cuts stay rare."""
    if kind == "json_object":
        fmt = {"type": "json_object"}

        def whole(text):
            try:
                return isinstance(json.loads(text), dict)
            except json.JSONDecodeError:
                return False
    else:
        fmt = openai.lib._parsing._completions.type_to_response_format_param(City)

        def whole(text):
            try:
                City.model_validate_json(text)
            except pydantic.ValidationError:
                return False
            return True

    def ok(r):
        text, finish = r
        if finish == "length":
            return text.lstrip().startswith("{") and is_json_prefix(text)
        return finish == "stop" and whole(text)

    results = _all(paths, lambda client, i: _complete_raw(client, i, fmt))
    _report(results, ok)
    cut = [r for _, r in results if r[1] == "length"]
    assert len(cut) <= len(results) // 10, f"{len(cut)} of {len(results)} answers were cut: {cut[:2]}"


def test_completions_unsupported_schema_keyword_is_a_400_naming_it(endpoint):
    client = endpoint.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(
            model="gpt-oss-20b", prompt="x", max_tokens=8,
            extra_body={"response_format": {"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "array", "unevaluatedItems": False}}}})
    assert e.value.body["param"] == "response_format.json_schema.schema"
    assert "unevaluatedItems" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="gpt-oss-20b", prompt="x", max_tokens=8,
                                  extra_body={"response_format": {"type": "yaml"}})
    assert e.value.body["param"] == "response_format.type"


def test_agents_sdk_runs_an_agent_with_a_strict_tool_to_completion(endpoint):
    """The OpenAI Agents SDK in Chat Completions mode: the forced first turn calls the strict
    tool with arguments its schema accepts, the tool's result goes back, and the run ends in
    a final answer."""
    import agents

    agents.set_tracing_disabled(True)
    calls = []

    @agents.function_tool(strict_mode=True)
    def get_weather(city: Annotated[str, pydantic.Field(max_length=40)], unit: Unit) -> str:
        """Current weather in a city.

        Args:
            city: The city's name.
            unit: The temperature unit.
        """
        calls.append((city, unit))
        return f"Sunny, 21 degrees {unit.value} in {city}."

    assert get_weather.strict_json_schema
    client = openai.AsyncOpenAI(base_url=endpoint.url + "/v1", api_key="unused", max_retries=0,
                                timeout=300)
    agent = agents.Agent(
        name="weather", instructions="Answer questions about the weather with the tool.",
        tools=[get_weather],
        model=agents.OpenAIChatCompletionsModel(model="gpt-oss-20b", openai_client=client),
        model_settings=agents.ModelSettings(temperature=0.7, max_tokens=MAX_TOKENS,
                                            tool_choice="required",
                                            extra_body={"reasoning_effort": "low"}))
    result = asyncio.run(agents.Runner.run(agent, "What is the weather in Paris?", max_turns=6))
    sent = [i.raw_item.arguments for i in result.new_items if isinstance(i, agents.ToolCallItem)]
    assert sent and len(calls) == len(sent), (sent, calls)
    for arguments in sent:
        WeatherArgs.model_validate_json(arguments)
        assert len(json.loads(arguments)["city"]) <= 40, arguments
    outputs = [i.output for i in result.new_items if isinstance(i, agents.ToolCallOutputItem)]
    assert not any("error" in str(o).lower() for o in outputs), outputs
    assert isinstance(result.final_output, str) and result.final_output, result.new_items


# --- OpenAI's other sampling parameters and response details, on the same nano server ---


def test_n_gives_independent_choices_streamed_or_not(nano):
    client = nano.client()
    kw = dict(model="gpt-oss-20b", messages=_messages(0), temperature=1.0, max_tokens=40, seed=5,
              extra_body={"reasoning_effort": "low"})
    r = client.chat.completions.create(n=3, **kw)
    assert [c.index for c in r.choices] == [0, 1, 2]
    single = client.chat.completions.create(**kw)
    assert r.choices[0].message.content == single.choices[0].message.content, "choice 0 uses the seed"
    # Choice i is the sequence of seed + i: independent samples, reproducible one by one.
    other = client.chat.completions.create(**dict(kw, seed=7))
    assert r.choices[2].message.content == other.choices[0].message.content
    assert r.choices[2].message.model_extra.get("reasoning_content") == \
        other.choices[0].message.model_extra.get("reasoning_content")
    assert r.usage.prompt_tokens == single.usage.prompt_tokens, "the prompt is counted once"
    finishes, contents = {}, {}
    for chunk in client.chat.completions.create(n=2, stream=True, **kw):
        for c in chunk.choices:
            contents[c.index] = contents.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert sorted(finishes) == [0, 1]
    assert contents[0] == r.choices[0].message.content, "streamed choice 0 equals choice 0"


def test_chat_logprobs_cover_the_content(nano):
    client = nano.client()
    kw = dict(model="gpt-oss-20b", messages=_messages(0), temperature=0.7, max_tokens=MAX_TOKENS,
              seed=3, logprobs=True, top_logprobs=3, extra_body={"reasoning_effort": "low"})
    r = client.chat.completions.create(**kw)
    content = r.choices[0].logprobs.content
    assert content, r
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob
        assert t.logprob <= t.top_logprobs[0].logprob + 1e-5
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token
    streamed = []
    for chunk in client.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            if c.logprobs and c.logprobs.content:
                streamed.extend(c.logprobs.content)
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == \
        [(t.token, round(t.logprob, 4)) for t in content], "SSE and JSON report the same logprobs"


def test_completions_logprobs_n_and_logit_bias(nano):
    client = nano.client()
    r = client.completions.create(model="gpt-oss-20b", prompt="The capital of France is", max_tokens=8,
                                  temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 8
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset[0] == 0 and all(a < b for a, b in zip(lp.text_offset, lp.text_offset[1:]))
    # A +100 bias on one token makes it the only choice; -100 bans the greedy first token.
    forced = client.completions.create(model="gpt-oss-20b", prompt="The capital of France is",
                                       max_tokens=4, temperature=0, logprobs=0,
                                       logit_bias={"12194": 100})
    assert len(set(forced.choices[0].logprobs.tokens)) == 1, forced
    assert forced.choices[0].logprobs.tokens[0] != lp.tokens[0]
    many = client.completions.create(model="gpt-oss-20b", prompt="The capital of France is", max_tokens=8,
                                     temperature=1.0, seed=1, n=3)
    assert [c.index for c in many.choices] == [0, 1, 2]


def test_penalties_change_a_repetitive_greedy_answer(nano):
    client = nano.client()
    kw = dict(model="gpt-oss-20b", prompt="a a a a a a a a a a a a", max_tokens=24, temperature=0)
    plain = client.completions.create(**kw).choices[0].text
    freq = client.completions.create(frequency_penalty=2.0, **kw).choices[0].text
    pres = client.completions.create(presence_penalty=2.0, **kw).choices[0].text
    rep = client.completions.create(extra_body={"repetition_penalty": 2.0}, **kw).choices[0].text
    assert freq != plain and pres != plain and rep != plain, (plain, freq, pres, rep)


def test_fingerprint_usage_details_and_defaults(nano):
    client = nano.client()
    kw = dict(model="gpt-oss-20b", messages=_messages(0), max_tokens=4, temperature=0)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert a.system_fingerprint and a.system_fingerprint == b.system_fingerprint
    assert a.usage.prompt_tokens_details.cached_tokens == 0
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert all("usage" in c.model_fields_set for c in chunks), "usage: null on every chunk"
    assert all(c.usage is None for c in chunks[:-1]) and chunks[-1].usage is not None
    # OpenAI's parameters at their defaults or null are accepted; unknown ones are not.
    client.chat.completions.create(modalities=["text"], prediction=None, audio=None, functions=None,
                                   logprobs=False, presence_penalty=0, frequency_penalty=0,
                                   logit_bias={}, n=1, **kw)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(extra_body={"frobnicate": 1}, **kw)
    assert e.value.body["code"] == "unknown_parameter" and e.value.body["param"] == "frobnicate"
