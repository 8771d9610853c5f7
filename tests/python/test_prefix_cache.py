"""Prefix caching and cache-aware routing, set up as the README tells users: gpt-oss-servers with
their default flags (the embedded gpt-oss-nano, `--prefix-cache-mib 1024`), registered with the
LB the default way (its default policy is `cache_aware`), and the official OpenAI Python SDK.

- Directly: a request that repeats a long prompt reports the reused tokens as
  `cached_tokens` (chat, completions, responses) and answers as it did without them.
- Through the LB: requests with one `prompt_cache_key` or `user` land on one backend; the turns
  of a conversation (chat history resent, or Responses' `previous_response_id`) follow the
  backend that holds their prefix and are served from its cache; when that backend dies, the
  conversation goes on on the other one without an error.
"""

import re
import urllib.request

import pytest

from conftest import EmbeddedServer, Lb

MODEL = "gpt-oss-20b"
LB_YAML = "health_check: {interval: 300ms, timeout: 300ms}\nbackends: []\n"
# The server's cache blocks are its prefill chunk: 256 tokens.
BLOCK = 256

# A long system prompt (about 1,000 tokens), as coding agents send with every turn.
RULES = "\n".join(
    f"Rule {i}: when the user asks about topic number {i}, answer briefly, name the topic, "
    f"and never mention rule {i + 1} or any rule after it."
    for i in range(40)
)
SYSTEM = "You are a helpful assistant. Answer in one short sentence.\n" + RULES


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    cache = tmp_path_factory.mktemp("nano-cache")
    logs = tmp_path_factory.mktemp("nano-logs")
    servers = {n: EmbeddedServer(cache, logs) for n in ("a", "b")}
    lb = Lb(LB_YAML, tmp_path_factory.mktemp("lb"))
    for name, s in servers.items():
        lb.register({"name": name, "url": s.url, "models": [MODEL]})
    lb.wait_healthy(list(servers))
    yield servers, lb
    lb.stop()
    for s in servers.values():
        if s.proc.poll() is None:
            s.stop()


def direct_client(server):
    import openai
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def metric(server, name):
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, f"{name} missing from /metrics"
    return float(m.group(1))


def chat(client, messages, **kw):
    kw.setdefault("max_tokens", 48)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, temperature=0, **kw)
    return raw.parse(), raw.headers.get("x-gpt-oss-lb-backend")


def cached(usage):
    details = usage.prompt_tokens_details
    return details.cached_tokens if details else 0


def test_a_repeated_prompt_is_served_from_the_cache_with_the_same_answer(door):
    servers, _ = door
    s = servers["a"]
    client = direct_client(s)
    hits = metric(s, "gpt_oss_prefix_cache_hits_total")
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": "Tell me about topic number 7."}]
    first, _ = chat(client, messages)
    again, _ = chat(client, messages)
    # Every whole block before the prompt's last token comes from the cache.
    assert first.usage.prompt_tokens > 3 * BLOCK
    want = (first.usage.prompt_tokens - 1) // BLOCK * BLOCK
    assert cached(again.usage) == want, (again.usage, first.usage)
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.choices[0].finish_reason == first.choices[0].finish_reason
    assert again.usage.completion_tokens == first.usage.completion_tokens
    assert metric(s, "gpt_oss_prefix_cache_hits_total") >= hits + want

    # Another question after the same system prompt shares its blocks.
    other, _ = chat(client, [messages[0], {"role": "user", "content": "And topic number 3?"}])
    assert cached(other.usage) >= 3 * BLOCK

    # Streamed, with usage: the same count.
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=48, stream=True,
        stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert usage.prompt_tokens_details.cached_tokens == want
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first.choices[0].message.content

    # Completions and Responses report it too.
    prompt = SYSTEM + "\n\nQuestion: what is topic number 12?\nAnswer:"
    c1 = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
    c2 = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
    assert c2.usage.prompt_tokens_details.cached_tokens == (c1.usage.prompt_tokens - 1) // BLOCK * BLOCK
    assert c2.choices[0].text == c1.choices[0].text
    r1 = client.responses.create(model=MODEL, instructions=SYSTEM, input="Topic number 20?",
                                 temperature=0, store=False)
    r2 = client.responses.create(model=MODEL, instructions=SYSTEM, input="Topic number 20?",
                                 temperature=0, store=False)
    assert r2.usage.input_tokens_details.cached_tokens >= 3 * BLOCK
    assert r2.output_text == r1.output_text


def test_one_prompt_cache_key_or_user_stays_on_one_backend(door):
    _, lb = door
    client = lb.client()
    seen = {}
    for key in [f"session-{i}" for i in range(12)]:
        backends = set()
        for q in ("topic number 1?", "topic number 2?"):
            _, b = chat(client, [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": q}], max_tokens=4,
                        prompt_cache_key=key)
            backends.add(b)
        assert len(backends) == 1, (key, backends)
        seen[key] = backends.pop()
    # The keys spread over both backends (12 keys on one of two: 1 in 2,048).
    assert set(seen.values()) == {"a", "b"}, seen
    for user in ("alice", "bob"):
        got = {chat(client, [{"role": "user", "content": q}], max_tokens=4, user=user)[1]
               for q in ("Hi.", "Hello.", "Hey.")}
        assert len(got) == 1, (user, got)


def test_chat_history_follows_its_prefix_and_is_cached(door):
    _, lb = door
    client = lb.client()
    messages = [{"role": "system", "content": SYSTEM + "\nConversation 41."}]
    backends = []
    for turn, q in enumerate(["Topic number 4?", "And topic number 5?", "And number 6?"]):
        messages.append({"role": "user", "content": q})
        resp, b = chat(client, messages)
        backends.append(b)
        if turn > 0:
            # the system prompt and earlier turns were prefilled on this backend
            assert cached(resp.usage) >= 3 * BLOCK, (turn, resp.usage)
        messages.append({"role": "assistant", "content": resp.choices[0].message.content})
    assert len(set(backends)) == 1, backends


def test_a_responses_conversation_sticks_and_moves_when_its_backend_dies(door):
    servers, lb = door
    client = lb.client()

    def turn(previous, text):
        raw = client.responses.with_raw_response.create(
            model=MODEL, instructions=SYSTEM, input=text, temperature=0, max_output_tokens=48,
            previous_response_id=previous)
        return raw.parse(), raw.headers.get("x-gpt-oss-lb-backend")

    r, first = turn(None, "Tell me about topic number 9.")
    assert r.status == "completed"
    for q in ("And topic number 10?", "And topic number 11?"):
        r, b = turn(r.id, q)
        assert b == first, (b, first)
        assert r.status == "completed"
        assert r.usage.input_tokens_details.cached_tokens >= 3 * BLOCK, r.usage
    servers[first].stop()
    other = ({"a", "b"} - {first}).pop()
    # The next turn goes to the other backend (nothing cached there yet) and the ones after
    # it stay there, served from its cache.
    r, b = turn(r.id, "And topic number 12?")
    assert (b, r.status) == (other, "completed")
    r, b = turn(r.id, "And topic number 13?")
    assert (b, r.status) == (other, "completed")
    assert r.usage.input_tokens_details.cached_tokens >= 3 * BLOCK, r.usage
