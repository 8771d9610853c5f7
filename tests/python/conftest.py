"""Fixtures for the OpenAI SDK tests: real `gpt-oss-server` processes on the committed tiny
gpt-oss fixture (random weights, so answers are gibberish, but every shape, stream and error
is real) or on the embedded gpt-oss-nano (no `--model-path`), and real `gpt-oss-lb` processes.

The release binaries must exist: `cargo build --release --bins` (scripts/test does it).
"""

import glob
import http.client
import json
import os
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "target" / "release" / "gpt-oss-server"
LB = ROOT / "target" / "release" / "gpt-oss-lb"
ARCHIVE = ROOT / "runtimes" / "fixture" / "tiny" / "model.tar.xz"


def _ort_dylib():
    if os.environ.get("ORT_DYLIB_PATH"):
        return os.environ["ORT_DYLIB_PATH"]
    libs = sorted(glob.glob(str(ROOT / ".venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*")))
    return libs[0] if libs else None


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    assert ARCHIVE.is_file(), f"fixture missing: {ARCHIVE}"
    out = tmp_path_factory.mktemp("tiny-gpt-oss")
    with tarfile.open(ARCHIVE, "r:xz") as tar:
        tar.extractall(out, filter="data")
    return out


class Server:
    def __init__(self, model_dir, *flags, log_dir):
        assert BINARY.is_file(), f"{BINARY} is missing: run `cargo build --release --bins` first"
        # The Responses store (default: under $XDG_DATA_HOME) goes into the test's own folder.
        env = dict(os.environ, RUST_LOG="info", XDG_DATA_HOME=str(Path(log_dir) / "data"))
        lib = _ort_dylib()
        if lib:
            env["ORT_DYLIB_PATH"] = lib
        self.log_path = Path(log_dir) / f"server-{time.time_ns()}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(BINARY), "--host", "127.0.0.1", "--port", "0", "--device-map", "cpu",
             "--model-path", str(model_dir), *flags],
            stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL, env=env, text=True,
        )
        line = self.proc.stdout.readline().strip()
        assert line.startswith("listening on "), f"unexpected first line {line!r}; log: {self.log()}"
        self.url = line.removeprefix("listening on ")
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except Exception:
                pass
            assert time.time() < deadline, f"server never became healthy: {self.log()}"
            time.sleep(0.1)

    def log(self):
        return self.log_path.read_text() if self.log_path.exists() else ""

    def client(self, **kw):
        kw.setdefault("api_key", "unused")
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 300)
        return openai.OpenAI(base_url=self.url + "/v1", **kw)

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def server(model_dir, tmp_path_factory):
    s = Server(model_dir, "--model-name", "gpt-oss-20b", log_dir=tmp_path_factory.mktemp("logs"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def busy_server(model_dir, tmp_path_factory):
    """One slot and no waiting line: a second request while one runs gets 429."""
    s = Server(model_dir, "--max-concurrent", "1", "--max-queue", "0",
               log_dir=tmp_path_factory.mktemp("logs"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def keyed_server(model_dir, tmp_path_factory):
    s = Server(model_dir, "--api-key", "sk-test-key", log_dir=tmp_path_factory.mktemp("logs"))
    yield s
    s.stop()


class EmbeddedServer:
    """`gpt-oss-server` with no --model-path (the embedded gpt-oss-nano), unpacked into
    `cache_dir` (shared by the servers of a test module: unpacked once)."""

    def __init__(self, cache_dir, log_dir, *flags):
        assert BINARY.is_file(), f"{BINARY} is missing: run `cargo build --release --bins` first"
        # The servers of one module share a cache (nano unpacked once) and a Responses store
        # (default: under $XDG_DATA_HOME), as servers on one machine do.
        env = dict(os.environ, RUST_LOG="info", XDG_CACHE_HOME=str(cache_dir),
                   XDG_DATA_HOME=str(Path(cache_dir) / "data"))
        lib = _ort_dylib()
        if lib:
            env["ORT_DYLIB_PATH"] = lib
        self.log_path = Path(log_dir) / f"nano-server-{time.time_ns()}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(BINARY), "--host", "127.0.0.1", "--port", "0", "--device-map", "cpu", *flags],
            stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL, env=env, text=True,
        )
        line = self.proc.stdout.readline().strip()
        assert line.startswith("listening on "), f"unexpected first line {line!r}; log: {self.log()}"
        self.url = line.removeprefix("listening on ")
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except Exception:
                pass
            assert self.proc.poll() is None, f"server exited: {self.log()}"
            assert time.time() < deadline, f"server never became healthy: {self.log()}"
            time.sleep(0.2)

    def log(self):
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self._log.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lb:
    """A real `gpt-oss-lb` on a free loopback port, with `config_yaml` as its config file.
    With no admin token configured, loopback clients may use its admin API."""

    def __init__(self, config_yaml, log_dir, state_file=True):
        assert LB.is_file(), f"{LB} is missing: run `cargo build --release --bins` first"
        d = Path(log_dir)
        self.dir = d
        # a replica whose config names a PostgreSQL `state_store` keeps no state file
        self.state_file = state_file
        (d / "lb.yaml").write_text(config_yaml)
        self.port = free_port()
        self.log_path = d / "lb.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.start()

    def start(self):
        """Starts the LB process (again, after `stop`: same port, state file and Responses
        store). Its default Responses store (`$XDG_DATA_HOME/gpt-oss-lb/responses.sqlite`) is
        put in its own folder through the environment."""
        d = self.dir
        self._log = open(self.log_path, "a")
        env = dict(os.environ, XDG_DATA_HOME=str(d / "data"))
        state = ["--state-file", str(d / "state.sqlite")] if self.state_file else []
        self.proc = subprocess.Popen(
            [str(LB), "--config", str(d / "lb.yaml"), "--host", "127.0.0.1", "--port", str(self.port),
             *state, "--upgrade-sock", str(d / "up.sock"), "--pid-file", str(d / "lb.pid")],
            stdout=subprocess.DEVNULL, stderr=self._log, stdin=subprocess.DEVNULL, env=env,
        )

    def responses_db(self):
        """The LB's default Responses store."""
        return self.dir / "data" / "gpt-oss-lb" / "responses.sqlite"

    def register(self, backend):
        """`POST /backends/register` with `backend` (a dict of the admin API's fields)."""
        deadline = time.time() + 30
        while True:
            req = urllib.request.Request(
                self.url + "/backends/register", data=json.dumps(backend).encode(),
                headers={"Content-Type": "application/json"}, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    assert r.status == 201, r.status
                    return json.load(r)
            except urllib.error.HTTPError:
                raise
            except OSError:
                # the LB is still starting
                assert self.proc.poll() is None, f"the LB exited: {self.log_path.read_text()}"
                assert time.time() < deadline, f"the LB never answered: {self.log_path.read_text()}"
                time.sleep(0.1)

    def status(self):
        with urllib.request.urlopen(self.url + "/status", timeout=5) as r:
            return json.load(r)

    def wait_healthy(self, names, timeout=60):
        deadline = time.time() + timeout
        while True:
            try:
                st = self.status()
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


class Postgres:
    """A real PostgreSQL server from Debian's `postgresql` package (scripts/setup installs it):
    a temporary data directory, a loopback port, and a database `gpt_oss_lb`. PostgreSQL
    refuses to run as root, so when the tests run as root it runs as the `postgres` user the
    package creates. `stop` and `start` take it down and bring it back on the same port."""

    def __init__(self, tls=False):
        """With `tls`, the server has a certificate for 127.0.0.1 signed by a CA of its own
        (`self.ca`, made with the openssl tool) and refuses connections without TLS."""
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        assert bins, "PostgreSQL is not installed: run scripts/setup"
        self.bin = Path(bins[-1]).parent
        import tempfile
        # not under pytest's folder, which only root may enter
        self.dir = Path(tempfile.mkdtemp(prefix="gpt-oss-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        self.tls_options = ""
        if tls:
            self._make_certificates()
        if self.as_root:
            subprocess.run(["chown", "-R", "postgres:postgres", str(self.dir)], check=True)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                  "-E", "UTF8")
        if tls:
            hba = self.data / "pg_hba.conf"
            hba.write_text("hostnossl all all 0.0.0.0/0 reject\n" + hba.read_text())
        self.start()
        self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q",
                  "-c", "CREATE DATABASE gpt_oss_lb")
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/gpt_oss_lb"

    def _make_certificates(self):
        d = self.dir
        self.ca = d / "ca.pem"

        def ssl(*args):
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

        ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
            "-keyout", "ca.key", "-out", "ca.pem", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")
        (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                                   "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
        ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", "server.pem", "-extfile", "san.ext")
        os.chmod(d / "server.key", 0o600)
        os.chmod(d, 0o755)  # the LB reads ca.pem
        self.tls_options = (f" -c ssl=on -c ssl_cert_file={d / 'server.pem'}"
                            f" -c ssl_key_file={d / 'server.key'}")

    def _run(self, tool, *args):
        exe = str(self.bin / tool) if (self.bin / tool).exists() else tool
        cmd = ["runuser", "-u", "postgres", "--", exe, *args] if self.as_root else [exe, *args]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=self.dir)
        assert r.returncode == 0, f"{tool} failed: {r.stdout}{r.stderr}"
        return r.stdout

    def start(self):
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "pg.log"), "-w", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1{self.tls_options}",
                  "start")

    def stop(self):
        """A fast shutdown: sessions are cut, as when the database goes away."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def sql(self, query):
        return self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d",
                         "gpt_oss_lb", "-At", "-c", query)

    def close(self):
        try:
            self.stop()
        except AssertionError:
            pass
        subprocess.run(["rm", "-rf", str(self.dir)])


def post_raw(url, path, data):
    """POST `data` (JSON bytes) to `url` + `path` and read the answer (status, JSON) even when
    the server answers (413) before the whole body was sent and closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest("POST", path)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(data)))
    conn.endheaders()
    try:
        for i in range(0, len(data), 1 << 16):
            conn.send(data[i:i + (1 << 16)])
    except (BrokenPipeError, ConnectionResetError):
        pass
    r = conn.getresponse()
    out = (r.status, json.loads(r.read()))
    conn.close()
    return out
