"""The Responses API of gpt-oss-server on the embedded gpt-oss-nano, through the official OpenAI
Python SDK: `responses.create`, `responses.stream`, `previous_response_id`, a function tool round
trip, stateless turns with `encrypted_content`, the stored objects (`retrieve`, `input_items`,
`delete`) across a restart, and bad input.

The server runs with its default flags; its default store (`$XDG_DATA_HOME/gpt-oss-server/
responses.sqlite`) is put in the test's own folder through the environment.
"""

import json
import sqlite3
from pathlib import Path

import openai
import pytest

from conftest import EmbeddedServer, post_raw

QUESTION = "What is the capital of France?"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string", "description": "The city."}},
        "required": ["location"],
    },
}


class Nano:
    def __init__(self, cache, logs):
        self.cache, self.logs = cache, logs
        self.start()

    def start(self):
        self.server = EmbeddedServer(self.cache, self.logs)
        self.url = self.server.url

    def restart(self):
        self.server.stop()
        self.start()

    def client(self):
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=300)

    def rows(self):
        db = Path(self.cache) / "data" / "gpt-oss-server" / "responses.sqlite"
        with sqlite3.connect(db) as c:
            return c.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


@pytest.fixture(scope="module")
def nano(tmp_path_factory):
    n = Nano(tmp_path_factory.mktemp("nano-cache"), tmp_path_factory.mktemp("nano-logs"))
    yield n
    n.server.stop()


def test_create_answers_with_reasoning_and_a_message(nano):
    r = nano.client().responses.create(model="gpt-oss-20b", input=QUESTION, temperature=0)
    assert r.status == "completed", r
    kinds = [o.type for o in r.output]
    assert kinds == ["reasoning", "message"], kinds
    assert r.output[0].content[0].type == "reasoning_text" and r.output[0].content[0].text
    assert "Paris" in r.output_text
    assert r.usage.output_tokens_details.reasoning_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.id.startswith("resp_") and r.store is True


def test_stream_events_build_the_same_response(nano):
    client = nano.client()
    whole = client.responses.create(model="gpt-oss-20b", input=QUESTION, temperature=0)
    with client.responses.stream(model="gpt-oss-20b", input=QUESTION, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"], types
    assert types[-1] == "response.completed", types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    # Every item is opened before its deltas and closed after them.
    assert types.index("response.reasoning_text.delta") > types.index("response.output_item.added")
    assert "response.output_text.done" in types
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == whole.output_text
    assert [o.type for o in final.output] == [o.type for o in whole.output]
    assert final.usage.output_tokens == whole.usage.output_tokens
    # The streamed response was stored as it finished.
    got = client.responses.retrieve(final.id)
    assert got.output_text == final.output_text and got.status == "completed"


def test_a_length_cut_is_incomplete(nano):
    client = nano.client()
    r = client.responses.create(model="gpt-oss-20b", input=QUESTION, max_output_tokens=5)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 5
    with client.responses.stream(model="gpt-oss-20b", input=QUESTION, max_output_tokens=5) as s:
        types = [e.type for e in s]
    assert types[-1] == "response.incomplete", types


def test_function_tool_round_trip_with_previous_response_id(nano):
    client = nano.client()
    first = client.responses.create(model="gpt-oss-20b", input="What is the weather in Paris?",
                                    tools=[WEATHER_TOOL], tool_choice="required", temperature=0)
    calls = [o for o in first.output if o.type == "function_call"]
    assert calls, first.output
    call = calls[0]
    assert call.name == "get_weather" and call.call_id
    assert "location" in json.loads(call.arguments)
    second = client.responses.create(
        model="gpt-oss-20b", previous_response_id=first.id, tools=[WEATHER_TOOL], temperature=0,
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": json.dumps({"temperature_c": 21, "sky": "sunny"})}])
    assert second.status == "completed", second
    assert second.previous_response_id == first.id
    assert second.output_text, second.output
    items = client.responses.input_items.list(second.id)
    assert [i.type for i in items.data] == ["function_call_output"]
    assert items.data[0].call_id == call.call_id


def test_stateless_turns_hand_reasoning_back_sealed(nano):
    client = nano.client()
    # `tool_choice: auto`: nano reasons, then calls the tool.
    first = client.responses.create(model="gpt-oss-20b", input="What is the weather in Paris?",
                                    tools=[WEATHER_TOOL], temperature=0,
                                    store=False, include=["reasoning.encrypted_content"])
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    reasoning = [o for o in first.output if o.type == "reasoning"]
    assert reasoning and reasoning[0].encrypted_content
    call = next(o for o in first.output if o.type == "function_call")
    # Codex CLI's way: send everything back, reasoning only as encrypted_content.
    back = [{"type": "reasoning", "id": reasoning[0].id, "summary": [],
             "encrypted_content": reasoning[0].encrypted_content},
            {"type": "function_call", "call_id": call.call_id, "name": call.name,
             "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}]
    second = client.responses.create(
        model="gpt-oss-20b", store=False, tools=[WEATHER_TOOL], temperature=0,
        input=[{"role": "user", "content": "What is the weather in Paris?"}, *back])
    assert second.status == "completed" and second.output_text
    tampered = dict(back[0], encrypted_content=reasoning[0].encrypted_content[:-4] + "AAAA")
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="gpt-oss-20b", store=False,
                                input=[{"role": "user", "content": "hi"}, tampered])
    assert e.value.body["param"] == "input[1].encrypted_content"


def test_stored_responses_survive_a_restart_and_delete(nano):
    client = nano.client()
    r = client.responses.create(model="gpt-oss-20b", input=QUESTION, temperature=0,
                                metadata={"case": "restart"})
    nano.restart()
    client = nano.client()
    got = client.responses.retrieve(r.id)
    assert got.output_text == r.output_text and got.metadata == {"case": "restart"}
    cont = client.responses.create(model="gpt-oss-20b", previous_response_id=r.id,
                                   input="And of Germany?", temperature=0)
    assert cont.status == "completed"
    deleted = client.responses.delete(r.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)


@pytest.mark.parametrize("body, status, param", [
    ({"input": [{"type": "computer_call", "id": "x"}]}, 400, "input[0].type"),
    ({"input": [{"role": "user", "content": "hi"},
                {"type": "function_call_output", "call_id": "call_nope", "output": "1"}]},
     400, "input[1].call_id"),
    ({"input": "hi", "previous_response_id": "resp_doesnotexist"}, 400, "previous_response_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]},
     400, "input[0].content[0].type"),
    ({"input": "hi", "tools": [{"type": "function"}]}, 400, "tools[0].name"),
    ({"input": "hi", "max_output_tokens": 0}, 400, "max_output_tokens"),
    ({"input": "hi", "metadata": {"k": 1}}, 400, "metadata.k"),
    ({"input": "hi", "made_up_field": True}, 400, "made_up_field"),
    ({"input": "x" * (10 * 1024 * 1024)}, 413, None),
])
def test_bad_input_is_refused_and_nothing_is_stored(nano, body, status, param):
    before = nano.rows()
    code, err = post_raw(nano.url, "/v1/responses", json.dumps({"model": "gpt-oss-20b", **body}).encode())
    assert code == status, err
    err = err["error"]
    assert err["message"] and err["type"]
    if param:
        assert err["param"] == param, err
    assert nano.rows() == before


def test_unknown_ids_get_openai_404(nano):
    client = nano.client()
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.retrieve("resp_missing")
    assert "resp_missing" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list("resp_missing")


def test_agents_sdk_in_its_default_responses_mode_runs_a_tool_using_agent(nano):
    """The OpenAI Agents SDK with its default model class (`OpenAIResponsesModel`): the first
    turn calls the strict tool, its result goes back as a `function_call_output` item, and the
    run ends in a final answer."""
    import asyncio

    import agents

    agents.set_tracing_disabled(True)
    calls = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city.

        Args:
            city: The city's name.
        """
        calls.append(city)
        return f"Sunny, 21 degrees C in {city}."

    client = openai.AsyncOpenAI(base_url=nano.url + "/v1", api_key="unused", max_retries=0,
                                timeout=300)
    # The SDK's defaults: a model given by name goes to the default client in Responses mode.
    agents.set_default_openai_client(client, use_for_tracing=False)
    agents.set_default_openai_api("responses")
    agent = agents.Agent(
        name="weather", instructions="Answer questions about the weather with the tool.",
        tools=[get_weather], model="gpt-oss-20b",
        model_settings=agents.ModelSettings(temperature=0, max_tokens=300, tool_choice="required",
                                            reasoning=openai.types.shared.Reasoning(effort="low")))
    result = asyncio.run(agents.Runner.run(agent, "What is the weather in Paris?", max_turns=6))
    sent = [i.raw_item.arguments for i in result.new_items if isinstance(i, agents.ToolCallItem)]
    assert sent and len(calls) == len(sent), (sent, calls)
    for arguments in sent:
        assert isinstance(json.loads(arguments)["city"], str), arguments
    assert isinstance(result.final_output, str) and result.final_output, result.new_items
