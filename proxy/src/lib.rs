//! `gpt-oss-lb`: the Pingora front door for gpt-oss model servers.
//!
//! A thin [`proxy::Lb`] (`ProxyHttp`) whose phases delegate to small modules:
//! [`dispatch`] (local endpoints, validation, routing), [`buffered`] (non-streaming
//! completions, checked before they are sent), [`policy`] (selection),
//! [`health`] (active and passive checks), [`admin`] (registration), [`headers`],
//! [`stream`] and [`rewrite`] (bodies), [`metrics`]. Shared state is an `ArcSwap`
//! [`state::Snapshot`]; the [`control`] background service runs health checks and reloads.

pub mod admin;
pub mod api;
pub mod backend;
pub mod buffered;
pub mod control;
pub mod dispatch;
pub mod error;
pub mod headers;
pub mod health;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod registry;
pub mod rewrite;
pub mod state;
pub mod stream;
