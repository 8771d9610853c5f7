"""Fixtures for the OpenAI Python SDK tests: real `gpt-oss-server` processes on the
committed tiny gpt-oss fixture (random weights, so answers are gibberish, but every
shape, stream and error is real).

The release binary must exist: `cargo build --release --bins` (scripts/test does it).
"""

import glob
import os
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "target" / "release" / "gpt-oss-server"
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
        env = dict(os.environ, RUST_LOG="info")
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
