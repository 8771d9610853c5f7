//! Real processes for the fault, bad-input, security and durability tests: the fixture
//! model, `gpt-oss-server` and `gpt-oss-lb` started as child processes on loopback, signals,
//! and the resident memory of a process.
//!
//! The binaries come from the same target profile as the test (`cargo build --release --bins`
//! first; `scripts/test` does it). Every child is killed when its handle drops.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The workspace root (the parent of `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `target/<profile>`, found from the test binary's own path (`target/<profile>/deps/x`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary; panics with the command to build it when missing.
pub fn binary(name: &str) -> PathBuf {
    let p = profile_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the binaries of this profile first (cargo build --release --bins)",
        p.display()
    );
    p
}

/// `ORT_DYLIB_PATH` for the server: the environment's, else the `.venv` wheel's library.
pub fn ort_dylib() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Some(PathBuf::from(p));
    }
    let lib = workspace_root().join(".venv/lib");
    for py in std::fs::read_dir(&lib).ok()?.flatten() {
        let capi = py.path().join("site-packages/onnxruntime/capi");
        for f in std::fs::read_dir(&capi).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            if name.starts_with("libonnxruntime.so.") {
                return Some(f.path());
            }
        }
    }
    None
}

/// The tiny gpt-oss fixture (`runtimes/fixture/tiny/model.tar.xz`), unpacked once per target dir.
pub fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let archive = workspace_root().join("runtimes/fixture/tiny/model.tar.xz");
        assert!(archive.is_file(), "fixture missing: {}", archive.display());
        let stamp = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fault-fixture-{stamp}"));
        if !dir.join("genai_config.json").is_file() {
            let partial = dir.with_extension(format!("partial-{}", std::process::id()));
            std::fs::create_dir_all(&partial).expect("create fixture dir");
            let status = Command::new("tar")
                .arg("-xJf")
                .arg(&archive)
                .arg("-C")
                .arg(&partial)
                .status()
                .expect("run tar");
            assert!(status.success(), "tar -xJf {} failed", archive.display());
            if std::fs::rename(&partial, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&partial);
            }
        }
        dir
    })
}

/// A loopback port that was free a moment ago (Pingora cannot listen on port 0 and report it).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A child process whose output goes to a log file; killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
    /// Lines of stdout, collected by a reader thread.
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let err = std::fs::File::create(&log).expect("create log file");
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(err);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().expect("stdout lines").push(line);
            }
        });
        Proc {
            name: name.to_string(),
            child,
            log,
            stdout: lines,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait for a stdout line containing `needle`; returns it.
    pub fn wait_stdout(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .stdout
                .lock()
                .expect("stdout lines")
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                self.alive(),
                "{} exited before printing '{needle}'; log:\n{}",
                self.name,
                self.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "{} did not print '{needle}' in {timeout:?}; log:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send a signal by name (`KILL`, `STOP`, `CONT`, `HUP`, `TERM`, `QUIT`).
    pub fn signal(&self, sig: &str) {
        signal_pid(self.pid(), sig);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait up to `timeout` for the process to exit; its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Resident memory in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("FAULT_SHOW_LOGS").is_some() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "---- last lines of {} ({}) ----\n{}",
                self.name,
                self.log.display(),
                tail.join("\n")
            );
        }
        // A stopped process must be continued to die promptly on some kernels' accounting.
        signal_pid(self.pid(), "CONT");
        self.kill();
    }
}

pub fn signal_pid(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

pub fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A running `gpt-oss-server` on the fixture model.
pub struct Server {
    pub proc: Proc,
    pub addr: SocketAddr,
}

/// Flags for [`Server::start`] beyond the defaults used here.
#[derive(Clone, Debug)]
pub struct ServerOpts {
    pub model_name: String,
    pub max_concurrent: u32,
    pub max_queue: u32,
    pub api_key: Option<String>,
    pub raw_output: bool,
    pub extra: Vec<String>,
    /// Bind to this port instead of an ephemeral one (restart on the same address).
    pub port: Option<u16>,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            model_name: "tiny".into(),
            max_concurrent: 2,
            max_queue: 64,
            api_key: None,
            raw_output: false,
            extra: Vec::new(),
            port: None,
        }
    }
}

impl Server {
    /// Start a server and wait until its model is loaded (`/health` 200).
    pub fn start(name: &str, opts: &ServerOpts, log_dir: &Path) -> Server {
        let mut cmd = Command::new(binary("gpt-oss-server"));
        cmd.args(["--host", "127.0.0.1", "--port"])
            .arg(opts.port.unwrap_or(0).to_string())
            .arg("--model-path")
            .arg(model_dir())
            .args(["--model-name", &opts.model_name, "--device-map", "cpu"])
            .args(["--max-concurrent", &opts.max_concurrent.to_string()])
            .args(["--max-queue", &opts.max_queue.to_string()])
            .args(["--shutdown-timeout-secs", "1"])
            .args(["--default-max-tokens", "32"])
            .env("RUST_LOG", "info");
        if let Some(k) = &opts.api_key {
            cmd.args(["--api-key", k]);
        }
        if opts.raw_output {
            cmd.arg("--raw-output");
        }
        cmd.args(&opts.extra);
        if let Some(lib) = ort_dylib() {
            cmd.env("ORT_DYLIB_PATH", lib);
        }
        let mut proc = Proc::spawn(name, cmd, log_dir);
        let line = proc.wait_stdout("listening on http://", Duration::from_secs(60));
        let addr: SocketAddr = line
            .rsplit("http://")
            .next()
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("cannot parse the address in '{line}'"));
        wait_http_ok(&mut proc, addr, "/health", Duration::from_secs(90));
        Server { proc, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Block until `GET path` answers 200 (or panic with the process log).
pub fn wait_http_ok(proc: &mut Proc, addr: SocketAddr, path: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((200, _)) = blocking_get(addr, path) {
            return;
        }
        assert!(
            proc.alive(),
            "{} exited while starting; log:\n{}",
            proc.name,
            proc.log_text()
        );
        assert!(
            Instant::now() < deadline,
            "{} {path} not 200 within {timeout:?}; log:\n{}",
            proc.name,
            proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tiny blocking HTTP/1.1 GET over loopback: (status, body). None on any I/O error.
pub fn blocking_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// A running `gpt-oss-lb`.
pub struct Lb {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub config: PathBuf,
    pub state_file: PathBuf,
    pub upgrade_sock: PathBuf,
    pub dir: PathBuf,
}

impl Lb {
    /// Write `config_yaml` to `dir/lb.yaml` and start the LB on a free loopback port.
    /// `env` adds environment variables (e.g. the admin token).
    pub fn start(name: &str, config_yaml: &str, dir: &Path, env: &[(&str, &str)]) -> Lb {
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, config_yaml).expect("write LB config");
        let port = free_port();
        let state_file = dir.join(format!("{name}-state.sqlite"));
        let upgrade_sock = dir.join(format!("{name}-upgrade.sock"));
        Self::start_at(
            name,
            &config,
            port,
            &state_file,
            &upgrade_sock,
            dir,
            env,
            false,
        )
    }

    /// Start on a given port/state file (restart after a kill, or a graceful upgrade when
    /// `upgrade` is set: the new process takes the socket from the old one).
    #[allow(clippy::too_many_arguments)]
    pub fn start_at(
        name: &str,
        config: &Path,
        port: u16,
        state_file: &Path,
        upgrade_sock: &Path,
        dir: &Path,
        env: &[(&str, &str)],
        upgrade: bool,
    ) -> Lb {
        let mut cmd = Command::new(binary("gpt-oss-lb"));
        cmd.arg("--config")
            .arg(config)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--state-file")
            .arg(state_file)
            .arg("--upgrade-sock")
            .arg(upgrade_sock)
            .arg("--pid-file")
            .arg(dir.join(format!("{name}.pid")))
            .args(["--grace-period", "2"])
            // The default Responses store, in the test's folder.
            .env("XDG_DATA_HOME", dir.join("data"))
            .env("RUST_LOG", "info,pingora=warn")
            .env_remove("GPT_OSS_LB_ADMIN_TOKEN");
        if upgrade {
            cmd.arg("--upgrade");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn(name, cmd, dir);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        if !upgrade {
            wait_http_any(&mut proc, addr, Duration::from_secs(30));
        }
        Lb {
            proc,
            addr,
            config: config.to_path_buf(),
            state_file: state_file.to_path_buf(),
            upgrade_sock: upgrade_sock.to_path_buf(),
            dir: dir.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GET /status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = blocking_get(self.addr, "/status").expect("GET /status");
        assert_eq!(code, 200, "GET /status: {body}");
        serde_json::from_str(&body).expect("/status is JSON")
    }

    /// The `/status` entry of backend `name`.
    pub fn backend_status(&self, name: &str) -> serde_json::Value {
        self.status()["backends"]
            .as_array()
            .and_then(|a| a.iter().find(|b| b["name"] == name).cloned())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Wait until backend `name` is (or is not) routable according to `/status`.
    pub fn wait_backend_healthy(
        &mut self,
        name: &str,
        healthy: bool,
        timeout: Duration,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let b = self.backend_status(name);
            if b["healthy"].as_bool() == Some(healthy) {
                return start.elapsed();
            }
            assert!(
                self.proc.alive(),
                "the LB died; log:\n{}",
                self.proc.log_text()
            );
            assert!(
                start.elapsed() < timeout,
                "backend {name} not healthy={healthy} within {timeout:?}: {b}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Block until anything answers HTTP on `addr` (the LB is up).
pub fn wait_http_any(proc: &mut Proc, addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if blocking_get(addr, "/health").is_some() {
            return;
        }
        assert!(
            proc.alive(),
            "{} exited while starting; log:\n{}",
            proc.name,
            proc.log_text()
        );
        assert!(
            Instant::now() < deadline,
            "{} did not answer within {timeout:?}; log:\n{}",
            proc.name,
            proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Timings of an LB config for fault tests.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub health_interval_ms: u64,
    pub health_timeout_ms: u64,
    pub first_byte_ms: u64,
    pub idle_ms: u64,
    pub cooldown_ms: u64,
}

impl Default for Timing {
    /// Fast checks, but slack enough for a loaded 2-core machine running two model servers.
    fn default() -> Self {
        Timing {
            health_interval_ms: 500,
            health_timeout_ms: 500,
            first_byte_ms: 20_000,
            idle_ms: 10_000,
            cooldown_ms: 1000,
        }
    }
}

/// An LB config with fast health checks for fault tests; `backends` is a list of (name, url)
/// serving `model`; `extra` is appended (top-level YAML keys not set here).
pub fn lb_config(model: &str, backends: &[(&str, String)], extra: &str) -> String {
    lb_config_with(model, backends, Timing::default(), extra)
}

pub fn lb_config_with(model: &str, backends: &[(&str, String)], t: Timing, extra: &str) -> String {
    let mut y = String::new();
    y.push_str(&format!(
        "health_check:\n  path: /health\n  interval: {}ms\n  timeout: {}ms\n  healthy_threshold: 1\n  unhealthy_threshold: 2\n  passive_failures: 2\n  ejection_cooldown: {}ms\n",
        t.health_interval_ms, t.health_timeout_ms.min(t.health_interval_ms), t.cooldown_ms
    ));
    y.push_str("retries:\n  max_attempts: 3\n  backoff: 10ms\n  max_backoff: 100ms\n");
    y.push_str(&format!(
        "timeouts:\n  connect: 1s\n  first_byte: {}ms\n  idle: {}ms\n",
        t.first_byte_ms, t.idle_ms
    ));
    y.push_str("backends:\n");
    for (name, url) in backends {
        y.push_str(&format!(
            "  - name: {name}\n    url: {url}\n    model_type: openai\n    models: [{model}]\n"
        ));
    }
    y.push_str(extra);
    y
}
