#!/usr/bin/env python3
"""Writes the canned upstream bodies that nginx serves in the proxy benchmark.

    python3 benches/proxy/bodies/gen.py      # rewrites chat.json, chat.sse, harmony.sse here

- chat.json    a non-streaming `chat.completion` (what an OpenAI-shaped backend answers)
- chat.sse     an SSE stream of 64 `chat.completion.chunk` frames, then `data: [DONE]`
- harmony.sse  the same framing, 64 chunks, but each delta carries RAW harmony text as a
               gpt-oss backend in raw mode emits it (analysis channel, then final channel),
               with special tokens split across frames (`<|chan` + `nel|>`), so the edge
               rewriter of gpt-oss-lb has real work to do.
The output is deterministic; the files are committed, this script documents how they were made.
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = "gpt-oss-bench"
CREATED = 1767225600
N_CHUNKS = 64

WORDS = ("the quick brown fox jumps over the lazy dog while a careful reader "
         "checks every token of the stream for order and completeness").split()


def words(n, start=0):
    return [WORDS[(start + i) % len(WORDS)] for i in range(n)]


def chunk(i, delta, finish=None):
    return {
        "id": "chatcmpl-bench0001",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def sse(frames):
    out = "".join("data: " + json.dumps(f, separators=(",", ":")) + "\n\n" for f in frames)
    return out + "data: [DONE]\n\n"


def chat_json():
    text = " ".join(words(40))
    body = {
        "id": "chatcmpl-bench0001",
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 24, "completion_tokens": 48, "total_tokens": 72},
    }
    return json.dumps(body, separators=(",", ":")) + "\n"


def chat_sse():
    frames = [chunk(0, {"role": "assistant", "content": ""})]
    for i in range(1, N_CHUNKS - 1):
        frames.append(chunk(i, {"content": " " + WORDS[i % len(WORDS)]}))
    frames.append(chunk(N_CHUNKS - 1, {}, "stop"))
    assert len(frames) == N_CHUNKS, "the SSE body must have exactly 64 chunk frames"
    return sse(frames)


def harmony_pieces():
    """Raw harmony text, cut into N_CHUNKS deltas the way a token stream arrives.

    The special tokens of the header are split across frames on purpose."""
    pieces = ["<|chan", "nel|>analysis", "<|message|>"]
    pieces += [" " + w for w in words(27, 3)]
    pieces += ["<|e", "nd|>", "<|start|>assistant", "<|channel|>", "final", "<|mes", "sage|>"]
    pieces += [" " + w for w in words(25, 7)]
    pieces += ["<|return|>"]
    return pieces


def harmony_sse():
    pieces = harmony_pieces()
    frames = [chunk(0, {"role": "assistant", "content": pieces[0]})]
    for i, p in enumerate(pieces[1:], start=1):
        frames.append(chunk(i, {"content": p}))
    frames.append(chunk(len(frames), {}, "stop"))
    assert len(frames) == N_CHUNKS, f"the raw-harmony body must have 64 frames, has {len(frames)}"
    return sse(frames)


def main():
    for name, text in (("chat.json", chat_json()), ("chat.sse", chat_sse()),
                       ("harmony.sse", harmony_sse())):
        with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
            f.write(text)
        print(f"{name}: {len(text.encode())} bytes")


if __name__ == "__main__":
    main()
