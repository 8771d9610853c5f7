"""Codex CLI (`@openai/codex` from npm, installed by `scripts/setup` into tests/node) completes a
turn with gpt-oss-nano through gpt-oss-lb, configured as the README tells users: a custom
provider with `wire_api = "responses"` pointed at the LB, which routes `/v1/responses` by model
to a gpt-oss-server registered the default way.

One Codex turn sends about 7,300 tokens of instructions and tool definitions (the embedded
nano's context is 32,768). Codex is run with every HTTP(S) proxy set to a closed loopback port
(and `NO_PROXY` for the loopback): whatever it would send elsewhere (update checks, analytics)
stays on this machine and fails.
"""

import os
import re
import subprocess
import urllib.request

import pytest

from conftest import ROOT, EmbeddedServer, Lb

CODEX = ROOT / "tests" / "node" / "node_modules" / ".bin" / "codex"


@pytest.fixture(scope="module")
def front_door(tmp_path_factory):
    nano = EmbeddedServer(tmp_path_factory.mktemp("nano-cache"), tmp_path_factory.mktemp("nano-logs"))
    lb = Lb("health_check: {interval: 300ms, timeout: 300ms}\nbackends: []\n",
            tmp_path_factory.mktemp("lb"))
    lb.register({"name": "nano", "url": nano.url, "models": ["gpt-oss-20b"]})
    lb.wait_healthy(["nano"])
    yield nano, lb
    lb.stop()
    nano.stop()


def responses_served(url):
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(r'gpt_oss_requests_total\{endpoint="responses",status="200"\} (\d+)', text)
    return int(m.group(1)) if m else 0


def test_codex_exec_completes_a_turn_through_the_lb(front_door, tmp_path):
    assert CODEX.is_file(), f"{CODEX} is missing: run scripts/setup (npm ci in tests/node)"
    nano, lb = front_door
    before = responses_served(nano.url)
    home, work = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    closed = "http://127.0.0.1:9"
    env = dict(os.environ, CODEX_HOME=str(home), HTTPS_PROXY=closed, HTTP_PROXY=closed,
               ALL_PROXY=closed, NO_PROXY="127.0.0.1,localhost", RUST_LOG="warn")
    argv = [str(CODEX), "exec", "--skip-git-repo-check",
            "-c", f'model_providers.local.base_url="{lb.url}/v1"',
            "-c", 'model_providers.local.wire_api="responses"',
            "-c", 'model_providers.local.name="local"',
            "-c", 'model_provider="local"',
            "-c", "analytics.enabled=false",
            "-m", "gpt-oss-20b",
            "What is the capital of France?"]
    r = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600,
                       stdin=subprocess.DEVNULL)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "ERROR" not in out, out
    assert re.search(r"tokens used\s+[\d,]+", out), out
    # The turn reached the server as a Responses request, through the LB.
    assert responses_served(nano.url) > before, out
