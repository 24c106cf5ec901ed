//! The library every Ebra function uses.
//!
//! - [`config`]: settings from the environment, validated once at start-up.
//! - [`domain`]: the parsed values (`PhoneNumber`, `ScriptId`, `Metadata`, `CallStatus`, ...).
//! - [`db`]: the Postgres pool and the migrations.
//! - [`store`]: every SQL statement Ebra runs, as named queries. The global cap is enforced in
//!   [`store::claim`], settlement in [`store::settle`].
//! - [`backoff`]: where retry delays are computed.
//! - [`rules`]: calling rules: windows in the callee's time zones (the do-not-call list and
//!   the daily cap per number are enforced in [`store::claim`]); [`clock`]: the "now" they
//!   are decided at.
//! - [`events`]: outbound events to clients (types, destinations, signed delivery, nudges);
//!   their SQL is in [`store::events`], [`store::endpoints`] and [`store::deliveries`].
//! - [`call_result`]: what a provider reports beyond the outcome, bounded.
//! - [`queue`]: the SQS calls queue (send, defer, recycle).
//! - [`provider`]: the AI-call provider (HTTP client and simulator).
//! - [`webhook_signature`]: where provider webhooks are verified (Standard Webhooks).
//! - [`problem`]: RFC 9457 problem+json errors.
//! - [`telemetry`]: structured logging.

pub mod backoff;
pub mod call_result;
pub mod clock;
pub mod config;
pub mod db;
pub mod domain;
pub mod events;
pub mod problem;
pub mod provider;
pub mod queue;
pub mod rules;
pub mod store;
pub mod telemetry;
pub mod webhook_signature;

pub use config::Config;
