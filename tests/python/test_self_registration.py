"""Servers that register themselves with leases (issue 21, item 4): `gpt-oss-server
--register-with LB_URL` (the embedded nano, default flags otherwise) behind a real `gpt-oss-lb`
with its default registration path, called with the OpenAI SDK.

- A server registers once its model is loaded and serves through the LB.
- SIGKILLed, it stops renewing: the LB drops it within its lease plus one health interval.
- SIGTERMed under load, it unregisters before it stops accepting: no client request fails.
- A hand-registered backend (no lease) stays; a renewal of an unknown name is a 404.
"""

import json
import signal
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

from conftest import EmbeddedServer, Lb

MODEL = "gpt-oss-20b"
LEASE = 3
HEALTH = 0.3
LB_YAML = f"health_check: {{interval: {int(HEALTH * 1000)}ms, timeout: 300ms}}\nbackends: []\n"


@pytest.fixture(scope="module")
def lb(tmp_path_factory):
    lb = Lb(LB_YAML, tmp_path_factory.mktemp("lb"))
    yield lb
    lb.stop()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("nano-cache")


def registered(lb):
    return {b["name"]: b for b in lb.status()["backends"]}


def self_registered_server(lb, cache, tmp_path):
    s = EmbeddedServer(cache, tmp_path, "--register-with", lb.url, "--lease-seconds", str(LEASE))
    port = s.url.rsplit(":", 1)[1]
    name = f"gpt-oss-server-127-0-0-1-{port}"
    lb.wait_healthy([name], timeout=30)
    return s, name


def ask(lb):
    c = openai.OpenAI(base_url=lb.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "What is 2+2?"}],
                                  max_tokens=64, temperature=0)
    return r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens > 0


def test_a_registered_server_serves_and_a_killed_one_goes_when_its_lease_runs_out(lb, cache, tmp_path):
    s, name = self_registered_server(lb, cache, tmp_path)
    b = registered(lb)[name]
    assert b["url"] == s.url and b["models"] == [MODEL] and b["source"] == "registered"
    assert ask(lb)
    # renewals keep it past several leases
    time.sleep(LEASE * 1.5)
    assert name in registered(lb)
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait()
    killed = time.monotonic()
    while name in registered(lb):
        assert time.monotonic() - killed < LEASE + HEALTH + 1.5, "still registered after its lease"
        time.sleep(0.05)
    assert "lease expired" in lb.log_path.read_text()


def test_a_terminated_server_leaves_before_draining_and_no_request_fails(lb, cache, tmp_path):
    a, name_a = self_registered_server(lb, cache, tmp_path)
    b, name_b = self_registered_server(lb, cache, tmp_path)
    results, stop = [], threading.Event()

    def load():
        while not stop.is_set():
            try:
                results.append(bool(ask(lb)))
            except Exception as e:  # noqa: BLE001 - every failure is counted
                results.append(repr(e))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        b.proc.send_signal(signal.SIGTERM)
        assert b.proc.wait(timeout=60) == 0, b.log()
        assert name_b not in registered(lb)
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    failures = [r for r in results if r is not True]
    assert len(results) > 5 and not failures, failures[:3]
    assert "unregistered from the load balancer" in b.log()
    assert name_a in registered(lb)
    a.stop()


def test_hand_registered_backends_have_no_lease(lb, cache, tmp_path):
    s = EmbeddedServer(cache, tmp_path)
    reply = lb.register({"name": "by-hand", "url": s.url, "models": [MODEL]})
    assert reply["backend"]["lease_seconds"] is None
    time.sleep(LEASE + 1)
    assert "by-hand" in registered(lb)
    for name, code in (("by-hand", 409), ("nobody", 404)):
        req = urllib.request.Request(f"{lb.url}/backends/{name}/lease", method="PUT")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == code
        body = json.load(e.value)
        assert body["error"]["code"] == {409: "no_lease", 404: "backend_not_found"}[code]
    s.stop()
