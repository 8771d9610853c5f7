//! Command-line flags of `gpt-oss-server`. The first six keep the seed prototype's
//! names and defaults; the rest are what production needs.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "gpt-oss-server",
    version,
    about = "OpenAI-compatible model server for gpt-oss"
)]
pub struct Args {
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,

    /// Port to bind (0 picks a free port; the chosen address is logged).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,

    /// Folder of the ONNX export (genai_config.json, model.onnx, tokenizer.json).
    #[arg(long)]
    pub model_path: Option<PathBuf>,

    /// The model name the API serves (`model` in requests and `/v1/models`).
    #[arg(long, default_value = "gpt-oss-20b")]
    pub model_name: String,

    /// Where the model runs: `auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    pub device_map: String,

    /// Requests generating at the same time; others wait first in, first out.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent: u32,

    /// Longest prompt plus completion, in tokens, below the model's context length (vLLM's
    /// `--max-model-len`). The decode pool holds `--max-concurrent` sequences of this length,
    /// allocated at load; unset, it is the model's context length, lowered at load (with a
    /// warning in the log) when that pool would take more than half of the available memory.
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..))]
    pub max_model_len: Option<u32>,

    /// Memory for automatic prefix caching, in MiB (0 turns it off; as llama.cpp's
    /// `--cache-ram`). The KV of recently prefilled prompts is kept in blocks of 256 tokens and
    /// reused by requests whose prompt starts with the same blocks, least recently used evicted
    /// first; responses report the reused tokens in `usage.prompt_tokens_details.cached_tokens`
    /// (`input_tokens_details` in the Responses API). CPU only.
    #[arg(long, default_value_t = 1024)]
    pub prefix_cache_mib: u64,

    /// Requests allowed to wait for a slot; one more gets 429 with `Retry-After`.
    #[arg(long, default_value_t = 64)]
    pub max_queue: u32,

    /// When set, requests must send `Authorization: Bearer <key>`; `/health` and
    /// `/metrics` stay open.
    #[arg(long, env = "GPT_OSS_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Return the unparsed harmony text (special tokens as literal text) in `content`,
    /// as the seed prototype did, for clients or proxies that parse it themselves.
    #[arg(long)]
    pub raw_output: bool,

    /// On SIGTERM/SIGINT: stop accepting, then give in-flight requests this many
    /// seconds to finish before exiting.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout_secs: u64,

    /// `max_tokens` when a request sets none (capped by the context length).
    #[arg(long, default_value_t = 4096)]
    pub default_max_tokens: u32,

    /// Seconds a client is told to wait in `Retry-After` on 429.
    #[arg(long, default_value_t = 1)]
    pub retry_after_secs: u64,
    /// The SQLite file where the Responses API keeps responses (`store: true`, the default),
    /// so that `previous_response_id` and `GET /v1/responses/{id}` work across restarts.
    /// `:memory:` keeps them in memory only. Default:
    /// `$XDG_DATA_HOME/gpt-oss-server/responses.sqlite` (else under `~/.local/share`).
    #[arg(long, env = "GPT_OSS_RESPONSES_STORE")]
    pub responses_store: Option<PathBuf>,
    /// The file of the 32-byte key that seals reasoning handed out as `encrypted_content`;
    /// made on first start. Default: `reasoning.key` next to the responses store (with
    /// `--responses-store :memory:`, a key that lives as long as the process).
    #[arg(long, env = "GPT_OSS_REASONING_KEY_FILE")]
    pub reasoning_key_file: Option<PathBuf>,

    /// Register with this gpt-oss-lb (`http://lb:8080`) once the model is loaded, with a
    /// lease renewed every third of `--lease-seconds`; on SIGTERM, unregister first, then
    /// drain. A server killed outright is dropped by the LB when its lease runs out.
    #[arg(long, value_name = "LB_URL")]
    pub register_with: Option<String>,

    /// The URL the LB reaches this server at. Default: `http://ADDRESS:PORT` of the bound
    /// socket (required when `--host` is a wildcard such as 0.0.0.0).
    #[arg(long, value_name = "URL")]
    pub advertise_url: Option<String>,

    /// The backend name to register (default: `gpt-oss-server-HOST-PORT` of the advertised
    /// URL, with `.` and `:` as `-`).
    #[arg(long)]
    pub register_name: Option<String>,

    /// How long the registration lasts without a renewal, in seconds (1 to 3600).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_seconds: u64,

    /// The LB's admin token, sent as `Authorization: Bearer` with registrations.
    #[arg(long, env = "GPT_OSS_LB_ADMIN_TOKEN", hide_env_values = true)]
    pub lb_admin_token: Option<String>,
}

impl Args {
    /// The responses store file; `None` for `:memory:`.
    pub fn responses_store_path(&self) -> Option<PathBuf> {
        let path = self
            .responses_store
            .clone()
            .unwrap_or_else(|| responses_store::ResponseStore::default_path("gpt-oss-server"));
        (path.as_os_str() != ":memory:").then_some(path)
    }

    /// The reasoning key file; `None` when responses are kept in memory and no file is given.
    pub fn reasoning_key_path(&self) -> Option<PathBuf> {
        self.reasoning_key_file.clone().or_else(|| {
            self.responses_store_path().map(|p| {
                p.parent()
                    .map(|d| d.join("reasoning.key"))
                    .unwrap_or_else(|| PathBuf::from("reasoning.key"))
            })
        })
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
}
