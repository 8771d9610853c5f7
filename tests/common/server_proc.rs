//! A real `gpt-oss-server` process on the committed tiny fixture model, for the
//! server's end-to-end tests: started with `--port 0` (the chosen address is read
//! from its stdout), ready once `/health` answers, killed on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `target/<profile>/<name>`, the binary of the test's own profile.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --release --bins` first (scripts/test does)",
        p.display()
    );
    p
}

/// The tiny gpt-oss fixture, unpacked once into the target's temp dir.
pub fn fixture_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let archive = workspace_root().join("runtimes/fixture/tiny/model.tar.xz");
        let size = std::fs::metadata(&archive)
            .unwrap_or_else(|e| panic!("fixture {}: {e}", archive.display()))
            .len();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("server-fixture-{size}"));
        if !dir.join("genai_config.json").is_file() {
            let partial = dir.with_extension(format!("partial-{}", std::process::id()));
            std::fs::create_dir_all(&partial).expect("create fixture dir");
            let ok = Command::new("tar")
                .arg("-xJf")
                .arg(&archive)
                .arg("-C")
                .arg(&partial)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "tar -xJf {} failed", archive.display());
            if std::fs::rename(&partial, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&partial);
            }
        }
        dir
    })
}

/// A running server; SIGKILLed on drop.
pub struct ServerProc {
    child: Child,
    pub url: String,
    stderr_log: PathBuf,
}

impl ServerProc {
    /// Starts `gpt-oss-server --model-path <fixture> <args>` and waits until it listens.
    /// With `wait_ready`, also waits until `/health` is 200 (the model loaded).
    pub fn start(args: &[&str], wait_ready: bool) -> ServerProc {
        Self::start_with_model(fixture_dir(), args, wait_ready)
    }

    pub fn start_with_model(model: &Path, args: &[&str], wait_ready: bool) -> ServerProc {
        let log_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("server-logs");
        std::fs::create_dir_all(&log_dir).expect("log dir");
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let stderr_log = log_dir.join(format!("server-{}-{n}.log", std::process::id()));
        let mut cmd = Command::new(binary("gpt-oss-server"));
        cmd.args(["--host", "127.0.0.1", "--port", "0", "--device-map", "cpu"])
            .arg("--model-path")
            .arg(model)
            .args(args)
            .env("RUST_LOG", "info,gpt_oss_server=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).expect("log file"));
        let mut child = cmd.spawn().expect("spawn gpt-oss-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "server did not print its address; log:\n{}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                )
            });
        let url = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .trim()
            .to_string();
        let server = ServerProc {
            child,
            url,
            stderr_log,
        };
        if wait_ready {
            server.wait_health(200, Duration::from_secs(120));
        }
        server
    }

    /// Waits until `GET /health` answers `status`.
    pub fn wait_health(&self, status: u16, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((s, _)) = blocking_get(&self.url, "/health") {
                if s == status {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "/health never answered {status}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `KILL`, ...) with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET with std only: (status, body).
pub fn blocking_get(base: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr = base.strip_prefix("http://")?;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}
