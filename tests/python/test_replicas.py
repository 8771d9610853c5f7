"""LB replicas that share their state through PostgreSQL (issue 21): a real PostgreSQL from
Debian's packages (conftest.Postgres), several real `gpt-oss-lb` processes whose YAML names it
(`state_store: {url: ...}`, the README's replicated set-up; everything else default), real
`gpt-oss-server` processes (the embedded nano, default flags), and the OpenAI SDK.

- A registration or removal through replica A is routed by replica B within 1 s.
- A 4-turn Responses conversation whose turns alternate between the replicas.
- PostgreSQL stopped under load: no client request to a healthy backend fails, admin writes
  are 503 `state_store_unavailable` and change nothing; started again, the replicas resync.
- SIGKILL of a replica during a registration burst: every acknowledged registration is there.
- A self-registered server SIGKILLed is gone from every replica within its lease plus one
  health interval; a SIGTERMed one fails no request while it drains.
"""

import json
import signal
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

from conftest import EmbeddedServer, Lb, Postgres, free_port

MODEL = "gpt-oss-20b"
LEASE = 3
HEALTH = 0.3


@pytest.fixture(scope="module")
def pg():
    p = Postgres()
    yield p
    p.close()


def replica_yaml(pg):
    return (f"state_store:\n  url: \"{pg.url}\"\n"
            f"health_check: {{interval: {int(HEALTH * 1000)}ms, timeout: 300ms}}\n")


@pytest.fixture(scope="module")
def replicas(pg, tmp_path_factory):
    lbs = [Lb(replica_yaml(pg), tmp_path_factory.mktemp(f"lb-{n}"), state_file=False) for n in "ab"]
    for lb in lbs:
        wait_up(lb)
    yield lbs
    for lb in lbs:
        lb.stop()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("nano-cache")


@pytest.fixture(scope="module")
def server(cache, tmp_path_factory):
    s = EmbeddedServer(cache, tmp_path_factory.mktemp("server"))
    yield s
    s.stop()


def wait_up(lb, timeout=30):
    deadline = time.time() + timeout
    while True:
        try:
            lb.status()
            return
        except OSError:
            assert lb.proc.poll() is None, f"the LB exited: {lb.log_path.read_text()}"
            assert time.time() < deadline, f"the LB never answered: {lb.log_path.read_text()}"
            time.sleep(0.1)


def admin(lb, method, path, body=None):
    """An admin call: (status, JSON body)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(lb.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def names(lb):
    return {b["name"]: b for b in lb.status()["backends"]}


def healthy_on(lb, name):
    b = names(lb).get(name)
    return b is not None and b["healthy"]


def client(lb):
    return openai.OpenAI(base_url=lb.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def ask(lb):
    raw = client(lb).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=32,
        temperature=0)
    r = raw.parse()
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens > 0
    return raw.headers.get("x-gpt-oss-lb-backend")


def metric(lb, name):
    with urllib.request.urlopen(lb.url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def load_through(lbs, backends):
    """Two client threads per LB asking in a loop until `stop` is set; each result is True
    (answered by one of `backends`) or the failure. Returns (results, stop, threads)."""
    results, stop = [], threading.Event()

    def load(lb):
        while not stop.is_set():
            try:
                results.append(ask(lb) in backends)
            except Exception as e:  # noqa: BLE001 - every failure is counted
                results.append(repr(e))

    threads = [threading.Thread(target=load, args=(lb,)) for lb in lbs * 2]
    for t in threads:
        t.start()
    return results, stop, threads


def until(cond, timeout, what):
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout}s"
        time.sleep(0.01)
    return time.monotonic() - start


def test_a_registration_through_one_replica_is_routed_by_the_other_within_a_second(replicas, server):
    a, b = replicas
    status, body = admin(a, "POST", "/backends/register", {"name": "nano-1", "url": server.url,
                                                           "models": [MODEL]})
    assert status == 201, body
    took = until(lambda: healthy_on(b, "nano-1"), 1.0, "replica B routes a backend registered through A")
    assert ask(b) == "nano-1"
    print(f"registered through A, routed by B after {took * 1000:.0f} ms")
    assert metric(b, "gpt_oss_lb_replica_changes_total") >= 1
    status, body = admin(a, "DELETE", "/backends/nano-1")
    assert status == 200, body
    took = until(lambda: "nano-1" not in names(b), 1.0, "replica B drops a backend removed through A")
    print(f"unregistered through A, gone from B after {took * 1000:.0f} ms")
    with pytest.raises(openai.NotFoundError):
        ask(b)
    # and the other way round
    assert admin(b, "POST", "/backends/register", {"name": "nano-1", "url": server.url,
                                                   "models": [MODEL]})[0] == 201
    until(lambda: healthy_on(a, "nano-1"), 1.0, "replica A routes a backend registered through B")
    assert ask(a) == "nano-1"


def test_a_conversation_alternates_between_replicas(pg, replicas, server):
    a, b = replicas
    until(lambda: healthy_on(a, "nano-1") and healthy_on(b, "nano-1"), 5, "nano-1 registered")
    previous = None
    ids = []
    for turn, lb in enumerate([a, b, a, b]):
        kw = {"previous_response_id": previous} if previous else {}
        r = client(lb).responses.create(model=MODEL, input=f"Turn {turn + 1}: what is {turn} + 1?",
                                        max_output_tokens=64, **kw)
        assert r.status in ("completed", "incomplete"), r
        assert r.previous_response_id == previous
        previous = r.id
        ids.append(r.id)
    # each replica reads every turn, whichever stored it
    for lb in (a, b):
        for rid in ids:
            assert client(lb).responses.retrieve(rid).id == rid
    # the last turn's input items, read through the replica that did not store it: the
    # whole conversation is in its stored conversation
    items = client(a).responses.input_items.list(ids[-1])
    assert any("Turn 4" in json.dumps(i.model_dump()) for i in items.data)
    quoted = ",".join(f"'{i}'" for i in ids)
    assert pg.sql(f"SELECT count(*) FROM responses WHERE id IN ({quoted})").strip() == "4"
    client(b).responses.delete(ids[0])
    with pytest.raises(openai.NotFoundError):
        client(a).responses.retrieve(ids[0])


def test_postgres_down_under_load_fails_no_request_and_admin_writes_are_503(pg, replicas, server):
    a, b = replicas
    until(lambda: healthy_on(a, "nano-1") and healthy_on(b, "nano-1"), 5, "nano-1 registered")
    results, stop, threads = load_through([a, b], {"nano-1"})
    try:
        time.sleep(1)
        pg.stop()
        time.sleep(1)
        before = names(b)
        status, body = admin(a, "POST", "/backends/register",
                             {"name": "during-outage", "url": server.url, "models": [MODEL]})
        assert status == 503, body
        assert body["error"]["code"] == "state_store_unavailable" and body["error"]["message"]
        status, body = admin(b, "DELETE", "/backends/nano-1")
        assert status == 503 and body["error"]["code"] == "state_store_unavailable", body
        assert "during-outage" not in names(a) and names(b).keys() == before.keys()
        assert metric(a, "gpt_oss_lb_state_store_up") == 0
        # a stored conversation cannot be read meanwhile: a clear 503, not a 404
        with pytest.raises(openai.APIStatusError) as e:
            client(a).responses.retrieve("resp_0123456789abcdef0123456789abcdef")
        assert e.value.status_code == 503 and e.value.code == "response_store_unavailable", e.value
        time.sleep(3)
        pg.start()
        # back: writes work and reach the other replica again, without a restart
        status, body = admin(a, "POST", "/backends/register",
                             {"name": "after-outage", "url": server.url, "models": [MODEL]})
        assert status == 201, body
        until(lambda: healthy_on(b, "after-outage"), 3, "B routes a registration made after the outage")
        until(lambda: metric(b, "gpt_oss_lb_state_store_up") == 1, 2, "B reports the store up")
        assert metric(b, "gpt_oss_lb_state_store_failures_total") > 0
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join()
    failures = [r for r in results if r is not True]
    assert len(results) > 8 and not failures, failures[:3]
    print(f"{len(results)} requests through both replicas, PostgreSQL down ~5 s: 0 failed")
    assert "during-outage" not in names(a) and "during-outage" not in names(b)
    assert admin(a, "DELETE", "/backends/after-outage")[0] == 200


def test_every_registration_acknowledged_before_a_sigkill_is_kept(pg, replicas, tmp_path):
    a, b = replicas
    victim = Lb(replica_yaml(pg), tmp_path, state_file=False)
    wait_up(victim)
    acked, stop = [], threading.Event()
    dead_port = free_port()  # registered backends need not answer: this is about the registry

    def burst(worker):
        i = 0
        while not stop.is_set():
            i += 1
            name = f"burst-{worker}-{i}"
            try:
                status, _ = admin(victim, "POST", "/backends/register",
                                  {"name": name, "url": f"http://127.0.0.1:{dead_port}", "models": ["burst"]})
            except Exception:  # noqa: BLE001 - cut by the kill: nothing was promised
                return
            if status == 201:
                acked.append(name)

    threads = [threading.Thread(target=burst, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    stop.set()
    for t in threads:
        t.join()
    victim._log.close()
    assert len(acked) > 10, acked
    stored = set(pg.sql("SELECT name FROM gpt_oss_lb_backends WHERE name LIKE 'burst-%'").split())
    missing = set(acked) - stored
    assert not missing, f"acknowledged but lost: {sorted(missing)[:5]}"
    # and the surviving replicas route them (announced, or at the latest by the resync)
    until(lambda: set(acked) <= names(b).keys(), 6, "B has every acknowledged registration")
    print(f"{len(acked)} registrations acknowledged before the SIGKILL: all kept and seen by B")
    for n in stored:
        admin(b, "DELETE", f"/backends/{n}")


def test_self_registered_servers_leave_every_replica(replicas, cache, tmp_path):
    a, b = replicas

    def start():
        s = EmbeddedServer(cache, tmp_path, "--register-with", a.url, "--lease-seconds", str(LEASE))
        name = f"gpt-oss-server-127-0-0-1-{s.url.rsplit(':', 1)[1]}"
        until(lambda: healthy_on(a, name) and healthy_on(b, name), 30, f"{name} on both replicas")
        return s, name

    killed, killed_name = start()
    time.sleep(LEASE * 1.5)  # renewals (through A) keep it on both
    assert killed_name in names(a) and killed_name in names(b)
    killed.proc.send_signal(signal.SIGKILL)
    killed.proc.wait()
    took = until(lambda: killed_name not in names(a) and killed_name not in names(b),
                 LEASE + HEALTH + 1.5, "a SIGKILLed server leaves every replica")
    print(f"SIGKILLed self-registered server gone from both replicas {took:.2f} s after the kill")

    kept, kept_name = start()
    term, term_name = start()
    results, stop, threads = load_through([a, b], {kept_name, term_name, "nano-1"})
    try:
        time.sleep(2)
        term.proc.send_signal(signal.SIGTERM)
        assert term.proc.wait(timeout=60) == 0, term.log()
        assert term_name not in names(a) and term_name not in names(b)
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    failures = [r for r in results if r is not True]
    assert len(results) > 5 and not failures, failures[:3]
    kept.stop()


def test_tls_to_postgres_is_verified_as_configured(tmp_path):
    """`ssl_mode: verify-full` with the server's CA (`ssl_root_cert`) connects to a PostgreSQL
    that refuses connections without TLS, and serves; `ssl_mode: disable` is refused there,
    and so is a CA that did not sign the server's certificate: the LB exits with the error."""
    import subprocess
    tls_pg = Postgres(tls=True)
    other_ca = tmp_path / "other.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=another CA", "-keyout", str(tmp_path / "other.key"),
                    "-out", str(other_ca)], check=True, capture_output=True)

    def replica(name, settings):
        (tmp_path / name).mkdir()
        return Lb(f"state_store:\n  url: \"{tls_pg.url}\"\n{settings}", tmp_path / name,
                  state_file=False)

    try:
        ok = replica("ok", f"  ssl_mode: verify-full\n  ssl_root_cert: \"{tls_pg.ca}\"\n")
        wait_up(ok)
        status, body = admin(ok, "POST", "/backends/register",
                             {"name": "over-tls", "url": f"http://127.0.0.1:{free_port()}", "models": ["m"]})
        assert status == 201, body
        assert tls_pg.sql("SELECT name FROM gpt_oss_lb_backends").split() == ["over-tls"]
        ok.stop()
        for name, settings, why in [
                ("plain", "  ssl_mode: disable\n", "no encryption"),
                ("wrong-ca", f"  ssl_mode: verify-full\n  ssl_root_cert: \"{other_ca}\"\n",
                 "invalid peer certificate")]:
            lb = replica(name, settings)
            assert lb.proc.wait(timeout=30) != 0, f"{name}: the LB must not start"
            lb._log.close()
            log = lb.log_path.read_text()
            assert "opening the state store" in log and why in log, log[-2000:]
    finally:
        tls_pg.close()


def test_the_kubernetes_manifests_hold_together(tmp_path):
    """Kubernetes cannot run here: the example manifests are checked as far as they can be
    without it. Every document parses; Services select the pods of a workload; every Secret
    key referenced exists; the LB's ConfigMap is a config `gpt-oss-lb -t` accepts and names a
    PostgreSQL state store; the servers' flags are ones `gpt-oss-server` knows."""
    import subprocess

    import yaml
    from conftest import BINARY, LB, ROOT

    docs = []
    for f in sorted((ROOT / "config" / "examples" / "kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    kinds = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    secrets = {n: set(d["stringData"]) for (k, n), d in kinds.items() if k == "Secret"}
    workloads = [d for (k, _), d in kinds.items() if k in ("Deployment", "StatefulSet")]
    labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads]
    for (k, n), d in kinds.items():
        if k == "Service":
            sel = d["spec"]["selector"]
            assert any(sel.items() <= l.items() for l in labels), f"Service {n} selects no pods"
    for w in workloads:
        assert w["spec"]["selector"]["matchLabels"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        for c in w["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], set()), f"{ref} is not in a Secret"
    lb_yaml = tmp_path / "lb.yaml"
    lb_yaml.write_text(kinds[("ConfigMap", "gpt-oss-lb-config")]["data"]["lb.yaml"])
    r = subprocess.run([str(LB), "--config", str(lb_yaml), "-t"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "postgres://" in lb_yaml.read_text()
    server = kinds[("Deployment", "gpt-oss-server")]["spec"]["template"]["spec"]["containers"][0]
    help_text = subprocess.run([str(BINARY), "--help"], capture_output=True, text=True).stdout
    for flag in server["command"][1:]:
        assert flag.split("=")[0] in help_text, f"gpt-oss-server does not know {flag}"
    assert "--register-with=http://gpt-oss-lb:8080" in server["command"]
