"""OpenAI's `n`: the choices are independent sequences that share the prompt's prefill. On the
embedded gpt-oss-nano, through the official OpenAI Python SDK, with the server's
`gpt_oss_prefill_tokens_total` (prompt tokens run through the model) as the proof: an `n=4`
request on the default configuration prefills its prompt once; with `--max-concurrent 1` (no
decode batch to copy a prefilled cache into) each choice prefills it.
"""

import re
import urllib.request

import openai
import pytest

from conftest import EmbeddedServer

QUESTION = [{"role": "user", "content": "Tell me a short story about a dragon."}]


def _serve(tmp_path_factory, *flags):
    s = EmbeddedServer(tmp_path_factory.mktemp("nano-cache"), tmp_path_factory.mktemp("nano-logs"), *flags)
    s.client = lambda: openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    return s


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    """The default configuration (`--max-concurrent 2`: a decode batch of two rows)."""
    s = _serve(tmp_path_factory)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def unbatched_server(tmp_path_factory):
    s = _serve(tmp_path_factory, "--max-concurrent", "1")
    yield s
    s.stop()


def _prefilled(server):
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(r"^gpt_oss_prefill_tokens_total (\d+)$", text, re.M)
    assert m, text
    return int(m.group(1))


GREEDY_MAX_TOKENS = 200
# The README's question: nano's greedy answer has a final message ("Washington"), so
# logprobs carry its tokens (the story prompt's greedy answer can end in analysis alone).
GREEDY_QUESTION = [{"role": "system", "content": "Always answer in just single word."},
                   {"role": "user", "content": "What is the capital of the US?"}]


def _chat(server, **kw):
    kw = dict(model="gpt-oss-20b", extra_body={"reasoning_effort": "low"},
              **{"messages": QUESTION, "max_tokens": 48, **kw})
    return server.client().chat.completions.create(**kw)


def _choice(c):
    """Everything a choice generated, token by token."""
    return (c.message.content, c.message.model_extra.get("reasoning_content"), c.finish_reason,
            [t.token for t in (c.logprobs.content or [])] if c.logprobs else None)


def test_n4_prefills_the_prompt_once(default_server):
    before = _prefilled(default_server)
    r = _chat(default_server, n=4, temperature=0.7, seed=3)
    after = _prefilled(default_server)
    assert len(r.choices) == 4
    p = r.usage.prompt_tokens
    assert p > 0
    assert after - before == p, f"prefilled {after - before} tokens for a prompt of {p} (n=4)"
    single_before = _prefilled(default_server)
    _chat(default_server, temperature=0.7, seed=3)
    assert _prefilled(default_server) - single_before == p


def test_without_a_decode_batch_each_choice_prefills(unbatched_server):
    before = _prefilled(unbatched_server)
    r = _chat(unbatched_server, n=4, temperature=0)
    assert _prefilled(unbatched_server) - before == 4 * r.usage.prompt_tokens


def test_greedy_choices_equal_the_n1_answer_token_for_token(default_server):
    # Logprobs cover the final answer's tokens: a question nano answers, with room for it.
    single = _chat(default_server, temperature=0, logprobs=True, max_tokens=GREEDY_MAX_TOKENS,
                   messages=GREEDY_QUESTION)
    many = _chat(default_server, n=4, temperature=0, logprobs=True, max_tokens=GREEDY_MAX_TOKENS,
                 messages=GREEDY_QUESTION)
    expected = _choice(single.choices[0])
    assert expected[3], "logprobs carry the tokens"
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    for c in many.choices:
        assert _choice(c) == expected, c.index
    streamed = {}
    for chunk in default_server.client().chat.completions.create(
            model="gpt-oss-20b", messages=GREEDY_QUESTION, max_tokens=GREEDY_MAX_TOKENS, n=4,
            temperature=0,
            stream=True,
            extra_body={"reasoning_effort": "low"}):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + (c.delta.content or "")
    assert streamed == {i: expected[0] for i in range(4)}


def test_sampled_choices_differ_and_a_seed_reproduces_the_response(default_server):
    differing = 0
    for seed in (11, 12, 13):
        r = _chat(default_server, n=4, temperature=0.7, seed=seed, logprobs=True)
        choices = [_choice(c) for c in r.choices]
        differing += len(set(map(repr, choices))) > 1
        again = _chat(default_server, n=4, temperature=0.7, seed=seed, logprobs=True)
        assert [_choice(c) for c in again.choices] == choices, f"seed {seed} reproduces the response"
        # Choice i samples with seed + i, as a single request with that seed does.
        last = _chat(default_server, temperature=0.7, seed=seed + 3, logprobs=True)
        assert _choice(last.choices[0]) == choices[3]
    assert differing > 0, "sampled choices of one request differ from each other"
