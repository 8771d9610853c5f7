"""The official OpenAI Python SDK against gpt-oss-lb in front of real gpt-oss-server processes
(a parsed-mode backend, and a raw-mode backend rewritten at the edge)."""

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from conftest import ROOT, Server

LB = ROOT / "target" / "release" / "gpt-oss-lb"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lb:
    def __init__(self, config_yaml, log_dir):
        assert LB.is_file(), f"{LB} is missing: run `cargo build --release --bins` first"
        d = Path(log_dir)
        (d / "lb.yaml").write_text(config_yaml)
        self.port = _free_port()
        self.log_path = d / "lb.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(LB), "--config", str(d / "lb.yaml"), "--host", "127.0.0.1", "--port", str(self.port),
             "--state-file", str(d / "state.json"), "--upgrade-sock", str(d / "up.sock"),
             "--pid-file", str(d / "lb.pid")],
            stdout=subprocess.DEVNULL, stderr=self._log, stdin=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, names, timeout=60):
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/status", timeout=5) as r:
                    st = json.load(r)
                if all(any(b["name"] == n and b["healthy"] for b in st["backends"]) for n in names):
                    return
            except Exception:
                pass
            assert self.proc.poll() is None, f"the LB exited: {self.log_path.read_text()}"
            assert time.time() < deadline, f"backends {names} not healthy: {self.log_path.read_text()}"
            time.sleep(0.1)

    def client(self):
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=300)

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self._log.close()


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
