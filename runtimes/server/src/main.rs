//! The `gpt-oss-server` binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gpt_oss_runtimes::DeviceMap;
use gpt_oss_server::{serve, shutdown_signal, spawn_model_load, AppState, Args, ServerConfig};
use tracing_subscriber::EnvFilter;

/// Where the weights come from.
enum ModelSource {
    /// An ONNX export folder given with `--model-path`.
    Folder(PathBuf),
    /// No `--model-path`: the model embedded in the binary (gpt-oss-nano, issue 6).
    Embedded,
}

fn model_source(args: &Args) -> ModelSource {
    match &args.model_path {
        Some(p) => ModelSource::Folder(p.clone()),
        None => ModelSource::Embedded,
    }
}

/// Buffers of a large request (the body, the prompt's text, its tokens) are mapped and
/// unmapped on their own, so resident memory returns to where it was once a multi-megabyte
/// request is answered. glibc's default raises this threshold after each large free (up to
/// 32 MiB), after which such buffers stay in the heap arenas: measured, 6 refused 3 MB
/// prompts left the server 65 MiB larger with the default and 0 MiB with 256 KiB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_large_buffers_to_the_os() {
    const MMAP_THRESHOLD_BYTES: libc::c_int = 256 * 1024;
    // SAFETY: `mallopt` only sets an allocator parameter; it is called once, before the
    // runtime's threads start.
    #[allow(unsafe_code)]
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) };
    if ok != 1 {
        tracing::warn!("could not set the allocator's mmap threshold");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_buffers_to_the_os() {}

fn main() -> ExitCode {
    return_large_buffers_to_the_os();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let folder = match model_source(&args) {
        ModelSource::Folder(p) => p,
        ModelSource::Embedded => {
            // Unpacked once per model version; later starts find the folder complete.
            let root = gpt_oss_runtimes::nano::default_cache_root(
                std::env::var("XDG_CACHE_HOME").ok().as_deref(),
                std::env::var("HOME").ok().as_deref(),
            );
            match gpt_oss_runtimes::nano::ensure_unpacked(&root) {
                Ok(dir) => {
                    tracing::info!(
                        path = %dir.display(),
                        "no --model-path: serving the embedded {}",
                        gpt_oss_runtimes::nano::MODEL_NAME
                    );
                    dir
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot unpack the embedded model; pass --model-path DIR");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    if !folder.is_dir() {
        tracing::error!(path = %folder.display(), "--model-path is not a folder");
        return ExitCode::from(2);
    }
    let device: DeviceMap = match args.device_map.parse() {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "invalid --device-map");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, folder, device)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, folder: PathBuf, device: DeviceMap) -> anyhow::Result<()> {
    let state = AppState::new(
        ServerConfig::from(&args),
        args.max_concurrent,
        args.max_queue,
    );
    // A store or key file that cannot be used stops the server now, not at the first request.
    state.responses.open().await?;
    let model_name = args.model_name.clone();
    let options = gpt_oss_server::loader::OnnxOptions {
        device,
        max_concurrent: args.max_concurrent,
        max_model_len: args.max_model_len,
        prefix_cache_bytes: usize::try_from(args.prefix_cache_mib.saturating_mul(1 << 20))
            .unwrap_or(usize::MAX),
    };
    spawn_model_load(state.clone(), move || {
        gpt_oss_server::loader::load_onnx(&folder, &model_name, &options)
    });
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .or_else(|_| {
            std::net::ToSocketAddrs::to_socket_addrs(&(args.host.as_str(), args.port))
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| anyhow::anyhow!("cannot resolve --host {}", args.host))
        })?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, model = %args.model_name, "gpt-oss-server listening");
    // Tests and scripts read this line to find the port when --port 0 is used.
    println!("listening on http://{local}");
    let registrar = match gpt_oss_server::registration::RegisterConfig::from_args(&args, local) {
        Ok(Some(cfg)) => Some(gpt_oss_server::registration::Registrar::spawn(
            state.clone(),
            cfg,
        )),
        Ok(None) => None,
        Err(e) => anyhow::bail!("{e}"),
    };
    // On SIGTERM a registered server leaves the load balancer first, then drains.
    let shutdown = async move {
        shutdown_signal().await;
        if let Some(r) = &registrar {
            r.unregister().await;
        }
    };
    serve(listener, state, shutdown, args.shutdown_timeout()).await?;
    tracing::info!("gpt-oss-server stopped");
    Ok(())
}
