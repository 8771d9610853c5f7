//! `gpt-oss-lb`: the Pingora front door for gpt-oss model servers.
//!
//! A thin [`proxy::Lb`] (`ProxyHttp`) whose phases delegate to small modules: [`dispatch`]
//! (the path table, local endpoints, reading the body), [`routing`] (the routed request, routes
//! and policies), [`failover`] (the verdict of each attempt, backoff, the final error),
//! [`health`] (active checks and outlier detection), [`admin`] (registration), [`auth`],
//! [`headers`], [`stream`] and [`rewrite`] (bodies), [`responses`] (the Responses API's
//! conversations), [`plugins`] (the filter chain: the built-in harmony filter, then proxy-wasm
//! plugins), [`metrics`]. Every proxied request,
//! streamed or not, goes through Pingora's phases and one attempt loop. Shared state is an
//! `ArcSwap` [`state::Snapshot`]; the [`control`] background service runs health checks and
//! reloads.

pub mod address;
pub mod admin;
pub mod api;
pub mod auth;
pub mod backend;
pub mod control;
pub mod dispatch;
pub mod error;
pub mod failover;
pub mod headers;
pub mod health;
pub mod health_check;
pub mod metrics;
pub mod plugins;
pub mod proxy;
pub mod registry;
pub mod responses;
pub mod rewrite;
pub mod routing;
pub mod state;
pub mod store;
pub mod stream;
