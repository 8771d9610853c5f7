"""The Responses API through gpt-oss-lb, set up as the README tells users: gpt-oss-servers with
their default flags (the embedded gpt-oss-nano), registered the default way, and the LB with its
default Responses store (`$XDG_DATA_HOME/gpt-oss-lb/responses.sqlite`, put in the test's folder
through the environment). The official OpenAI Python SDK is the client.

The LB keeps the conversations: it resolves `previous_response_id` from its own store and sends
each backend a stateless request, so a conversation goes on when its backend is killed, and the
LB's stored responses survive its restart. A `--raw-output` server's harmony text is rewritten
into Responses items at the edge.
"""

import json
import sqlite3

import openai
import pytest

from conftest import EmbeddedServer, Lb, post_raw
from test_responses import WEATHER_TOOL

MODEL = "gpt-oss-20b"
LB_YAML = "health_check: {interval: 300ms, timeout: 300ms}\nbackends: []\n"


class FrontDoor:
    def __init__(self, factory):
        self.cache = factory.mktemp("nano-cache")
        self.logs = factory.mktemp("nano-logs")
        self.servers = {n: EmbeddedServer(self.cache, self.logs) for n in ("a", "b")}
        self.lb = Lb(LB_YAML, factory.mktemp("lb"))
        for name, s in self.servers.items():
            self.lb.register({"name": name, "url": s.url, "models": [MODEL]})
        self.lb.wait_healthy(list(self.servers))

    def client(self):
        return self.lb.client()

    def lb_rows(self):
        with sqlite3.connect(self.lb.responses_db()) as c:
            return c.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def server_rows(self):
        """Rows in the servers' own store (they share one folder): the LB sends them stateless
        requests, so none."""
        db = self.cache / "data" / "gpt-oss-server" / "responses.sqlite"
        if not db.exists():
            return 0
        with sqlite3.connect(db) as c:
            return c.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def stop(self):
        self.lb.stop()
        for s in self.servers.values():
            if s.proc.poll() is None:
                s.stop()


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    d = FrontDoor(tmp_path_factory)
    yield d
    d.stop()


def create(client, **kw):
    """`responses.create`, with the backend that answered (the LB's `x-gpt-oss-lb-backend`)."""
    raw = client.responses.with_raw_response.create(model=MODEL, temperature=0, **kw)
    return raw.parse(), raw.headers.get("x-gpt-oss-lb-backend")


def stream(client, **kw):
    """`responses.stream`: the events and the final response."""
    with client.responses.stream(model=MODEL, temperature=0, **kw) as s:
        events = list(s)
        final = s.get_final_response()
    return events, final


def dump(items):
    return [i.model_dump(exclude_none=True) for i in items]


def check_stored(client, response, sent):
    """The LB's stored response equals what the client got, and its input items what was sent."""
    got = client.responses.retrieve(response.id)
    assert dump(got.output) == dump(response.output)
    assert got.status == response.status and got.previous_response_id == response.previous_response_id
    items = client.responses.input_items.list(response.id, order="asc").data
    assert len(items) == len(sent), (items, sent)
    for item, s in zip(items, sent):
        d = item.model_dump(exclude_none=True)
        assert d["type"] == s.get("type", "message")
        for k in ("call_id", "output", "role"):
            if k in s:
                assert d[k] == s[k], (d, s)
        if "content" in s:
            text = s["content"] if isinstance(s["content"], str) else s["content"][0]["text"]
            assert d["content"][0]["text"] == text


def test_a_four_turn_conversation_goes_on_when_its_backend_is_killed(door):
    client = door.client()
    # Turn 1: a tool call.
    t1, b1 = create(client, input="What is the weather in Paris?", tools=[WEATHER_TOOL],
                    tool_choice="required")
    assert t1.status == "completed" and t1.store is True and t1.previous_response_id is None
    call1 = next(o for o in t1.output if o.type == "function_call")
    assert call1.name == "get_weather" and "location" in json.loads(call1.arguments)
    check_stored(client, t1, [{"role": "user", "content": "What is the weather in Paris?"}])

    # Turn 2 (streamed): the tool's result; the answer.
    out2 = {"type": "function_call_output", "call_id": call1.call_id,
            "output": json.dumps({"temperature_c": 21, "sky": "sunny"})}
    events, t2 = stream(client, previous_response_id=t1.id, input=[out2], tools=[WEATHER_TOOL])
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed", types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.previous_response_id == t1.id and events[0].response.store is True
    assert t2.status == "completed" and t2.output_text, t2.output
    assert t2.previous_response_id == t1.id
    check_stored(client, t2, [out2])

    # The backends keep nothing: the conversation lives in the LB.
    assert door.server_rows() == 0
    # Kill the backend of turn 1; the next turns land on the other one.
    door.servers[b1].stop()

    # Turn 3: another question in the same conversation, another tool call.
    t3, b3 = create(client, previous_response_id=t2.id, input="And in Berlin?",
                    tools=[WEATHER_TOOL], tool_choice="required")
    assert b3 != b1
    assert t3.status == "completed" and t3.previous_response_id == t2.id
    call3 = next(o for o in t3.output if o.type == "function_call")
    check_stored(client, t3, [{"role": "user", "content": "And in Berlin?"}])

    # Turn 4 (streamed): its result and the answer.
    out4 = {"type": "function_call_output", "call_id": call3.call_id,
            "output": json.dumps({"temperature_c": 12, "sky": "rain"})}
    events, t4 = stream(client, previous_response_id=t3.id, input=[out4], tools=[WEATHER_TOOL])
    assert events[-1].type == "response.completed"
    assert t4.status == "completed" and t4.output_text
    check_stored(client, t4, [out4])
    # The last turn was rendered with the whole conversation: 4 turns of input.
    assert t4.usage.input_tokens > t3.usage.input_tokens > t1.usage.input_tokens
    assert door.lb_rows() >= 4


def test_stored_responses_survive_an_lb_restart(door):
    client = door.client()
    r, _ = create(client, input="What is the capital of France?", metadata={"case": "lb-restart"})
    door.lb.stop()
    door.lb.start()
    alive = [n for n, s in door.servers.items() if s.proc.poll() is None]
    door.lb.wait_healthy(alive)
    client = door.client()
    got = client.responses.retrieve(r.id)
    assert got.output_text == r.output_text and got.metadata == {"case": "lb-restart"}
    cont, _ = create(client, previous_response_id=r.id, input="And of Germany?")
    assert cont.status == "completed" and cont.previous_response_id == r.id
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(r.id)


@pytest.mark.parametrize("body, status, param", [
    ({"input": [{"type": "computer_call", "id": "x"}]}, 400, "input[0].type"),
    ({"input": [{"role": "user", "content": "hi"},
                {"type": "function_call_output", "call_id": "call_nope", "output": "1"}]},
     400, "input[1].call_id"),
    ({"input": "hi", "previous_response_id": "resp_doesnotexist"}, 400, "previous_response_id"),
    ({"input": "hi", "store": "yes"}, 400, "store"),
    ({"input": "x" * (10 * 1024 * 1024)}, 413, None),
])
def test_bad_input_through_the_lb_is_refused_and_nothing_is_stored(door, body, status, param):
    before = door.lb_rows()
    code, err = post_raw(door.lb.url, "/v1/responses", json.dumps({"model": MODEL, **body}).encode())
    assert code == status, err
    err = err["error"]
    assert err["message"] and err["type"]
    if param:
        assert err["param"] == param, err
    assert door.lb_rows() == before


@pytest.fixture(scope="module")
def raw_door(door, tmp_path_factory):
    """A `--raw-output` server (raw harmony text in `output_text`) and a parsed one, each
    behind its own LB with the default registration."""
    raw = EmbeddedServer(door.cache, door.logs, "--raw-output")
    lb = Lb(LB_YAML, tmp_path_factory.mktemp("lb-raw"))
    lb.register({"name": "raw", "url": raw.url, "models": [MODEL]})
    lb.wait_healthy(["raw"])
    yield lb
    lb.stop()
    raw.stop()


def test_raw_harmony_is_rewritten_into_items_at_the_edge(door, raw_door):
    parsed_server = next(s for s in door.servers.values() if s.proc.poll() is None)
    direct = openai.OpenAI(base_url=parsed_server.url + "/v1", api_key="unused", max_retries=0,
                           timeout=300)
    client = raw_door.client()
    for kw in ({"input": "What is the capital of France?"},
               {"input": "What is the weather in Paris?", "tools": [WEATHER_TOOL],
                "tool_choice": "required"}):
        want = direct.responses.create(model=MODEL, temperature=0, store=False, **kw)
        got, _ = create(client, **kw)
        events, streamed = stream(client, **kw)
        for r in (got, streamed):
            assert "<|" not in r.model_dump_json(), r
            assert [o.type for o in r.output] == [o.type for o in want.output]
            assert r.output_text == want.output_text
            calls = [(o.name, o.arguments) for o in r.output if o.type == "function_call"]
            assert calls == [(o.name, o.arguments) for o in want.output if o.type == "function_call"]
        assert [e.sequence_number for e in events] == list(range(len(events)))
        deltas = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
        reasoning = [o.content[0].text for o in want.output if o.type == "reasoning"]
        assert deltas == "".join(reasoning)
    # The rewritten response is what the LB stored and continues from.
    cont, _ = create(client, previous_response_id=got.id, input="Thanks. And in Berlin?")
    assert cont.status == "completed" and "<|" not in cont.model_dump_json()
