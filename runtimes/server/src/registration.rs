//! Self-registration with a gpt-oss-lb (`--register-with`).
//!
//! Once the model is loaded, the server registers itself (`POST /backends/register` with
//! `lease_seconds` and `replace: true`) and renews the lease every third of its length
//! (`PUT /backends/{name}/lease`); a renewal answered 404 (the LB restarted, or the lease ran
//! out while the LB was unreachable) registers again at once. On SIGTERM the server
//! unregisters (`DELETE /backends/{name}`) before it stops accepting requests, so the LB sends
//! it nothing new while it drains. Killed outright, it stops renewing, and the LB drops it when
//! the lease runs out. Failures are logged and retried (1 s, doubling up to the renewal
//! period); they never stop the server.

use std::sync::Arc;
use std::time::Duration;

use crate::state::AppState;

/// What to register, and where.
#[derive(Debug, Clone)]
pub struct RegisterConfig {
    /// The LB's base URL, without a trailing `/`.
    pub lb_url: String,
    /// The backend's name at the LB.
    pub name: String,
    /// The URL the LB reaches this server at.
    pub advertise_url: String,
    /// The model id this server serves.
    pub model: String,
    pub lease: Duration,
    pub admin_token: Option<String>,
}

impl RegisterConfig {
    /// From the flags and the bound address. Errors: `--advertise-url` missing while the
    /// server listens on a wildcard address, or an LB URL that is not `http(s)://`.
    pub fn from_args(
        args: &crate::Args,
        local: std::net::SocketAddr,
    ) -> Result<Option<RegisterConfig>, String> {
        let Some(lb) = &args.register_with else {
            return Ok(None);
        };
        if !(lb.starts_with("http://") || lb.starts_with("https://")) {
            return Err(format!(
                "--register-with {lb}: must be an http:// or https:// URL"
            ));
        }
        let advertise_url = match &args.advertise_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None if local.ip().is_unspecified() => {
                return Err(format!(
                    "--register-with needs --advertise-url: the server listens on {local}, which the LB cannot reach by that address"
                ))
            }
            None => format!("http://{local}"),
        };
        let name = args.register_name.clone().unwrap_or_else(|| {
            let host = advertise_url
                .split("://")
                .nth(1)
                .unwrap_or(&advertise_url)
                .trim_end_matches('/');
            let cleaned: String = host
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            format!("gpt-oss-server-{}", cleaned.trim_matches('-'))
        });
        Ok(Some(RegisterConfig {
            lb_url: lb.trim_end_matches('/').to_string(),
            name,
            advertise_url,
            model: args.model_name.clone(),
            lease: Duration::from_secs(args.lease_seconds),
            admin_token: args.lb_admin_token.clone().filter(|t| !t.is_empty()),
        }))
    }
}

/// The running registration: renews in the background until [`Registrar::unregister`].
pub struct Registrar {
    cfg: RegisterConfig,
    client: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Registrar {
    /// Start: wait for the model, register, renew.
    pub fn spawn(state: Arc<AppState>, cfg: RegisterConfig) -> Registrar {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        let task = tokio::spawn(run(state, cfg.clone(), client.clone()));
        Registrar { cfg, client, task }
    }

    /// Stop renewing and unregister (bounded to 5 s; the LB drops the registration when its
    /// lease runs out if this fails).
    pub async fn unregister(&self) {
        self.task.abort();
        let url = format!("{}/backends/{}", self.cfg.lb_url, self.cfg.name);
        match with_token(self.client.delete(&url), &self.cfg).send().await {
            Ok(r) if r.status().is_success() || r.status() == 404 => {
                tracing::info!(lb = %self.cfg.lb_url, name = %self.cfg.name, "unregistered from the load balancer")
            }
            Ok(r) => {
                tracing::warn!(lb = %self.cfg.lb_url, status = r.status().as_u16(), "the load balancer refused the unregistration; it will drop this server when the lease runs out")
            }
            Err(e) => {
                tracing::warn!(lb = %self.cfg.lb_url, error = %e, "could not unregister; the load balancer drops this server when the lease runs out")
            }
        }
    }
}

fn with_token(req: reqwest::RequestBuilder, cfg: &RegisterConfig) -> reqwest::RequestBuilder {
    match &cfg.admin_token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

/// What one attempt got.
enum Outcome {
    Ok,
    /// The LB does not know this backend (any more): register again.
    Unknown,
    Failed(String),
}

async fn register(client: &reqwest::Client, cfg: &RegisterConfig) -> Outcome {
    let body = serde_json::json!({
        "name": cfg.name,
        "url": cfg.advertise_url,
        "models": [cfg.model],
        "model_type": "gpt-oss",
        "lease_seconds": cfg.lease.as_secs(),
        "replace": true,
    });
    let url = format!("{}/backends/register", cfg.lb_url);
    match with_token(client.post(&url).json(&body), cfg).send().await {
        Ok(r) if r.status().is_success() => Outcome::Ok,
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            Outcome::Failed(format!(
                "{status}: {}",
                text.chars().take(300).collect::<String>()
            ))
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

async fn renew(client: &reqwest::Client, cfg: &RegisterConfig) -> Outcome {
    let url = format!("{}/backends/{}/lease", cfg.lb_url, cfg.name);
    match with_token(client.put(&url), cfg).send().await {
        Ok(r) if r.status().is_success() => Outcome::Ok,
        Ok(r) if r.status() == 404 => Outcome::Unknown,
        Ok(r) => Outcome::Failed(format!("{}", r.status().as_u16())),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

async fn run(state: Arc<AppState>, cfg: RegisterConfig, client: reqwest::Client) {
    while state.ready_model().is_err() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let period = (cfg.lease / 3).max(Duration::from_millis(300));
    let mut registered = false;
    let mut backoff = Duration::from_secs(1);
    loop {
        let outcome = if registered {
            renew(&client, &cfg).await
        } else {
            register(&client, &cfg).await
        };
        match outcome {
            Outcome::Ok => {
                if !registered {
                    tracing::info!(lb = %cfg.lb_url, name = %cfg.name, url = %cfg.advertise_url, lease_seconds = cfg.lease.as_secs(), "registered with the load balancer");
                }
                registered = true;
                backoff = Duration::from_secs(1);
                tokio::time::sleep(period).await;
            }
            Outcome::Unknown => {
                tracing::warn!(lb = %cfg.lb_url, name = %cfg.name, "the load balancer no longer knows this server; registering again");
                registered = false;
            }
            Outcome::Failed(why) => {
                tracing::warn!(lb = %cfg.lb_url, name = %cfg.name, error = %why, registered, "registration with the load balancer failed; retrying");
                tokio::time::sleep(backoff.min(period)).await;
                backoff = (backoff * 2).min(period);
            }
        }
    }
}
