//! `pg-proxy`: the Portcullis PostgreSQL gateway.
//!
//! A tokio driver around `policy-core`: it speaks the PostgreSQL wire
//! protocol (v3) to clients and to the server, and asks the engine about
//! every statement and every result row. It holds no policy logic of its
//! own.
//!
//! - [`config`]: the configuration file;
//! - [`admin`]: the admin HTTP server (the approvals API);
//! - [`approvals`]: statements held until people approve them;
//! - [`audit`]: the tamper-evident log behind the sessions' record sink;
//! - [`metrics`]: the Prometheus metrics the admin server serves;
//! - [`server`]: accepting clients, TLS, login, cancel requests;
//! - [`session`]: one client session: the protocol core with no I/O
//!   ([`session::SessionCore`]), its tokio driver, holds, the record sink
//!   and the registry of live sessions;
//! - [`upstream`]: the database side, with the held credential;
//! - [`catalog`]: table OIDs to names, for masking;
//! - [`codec`]: frontend and backend messages, parsed without copying;
//! - [`auth`]: the identity provider's key set;
//! - [`tls`]: rustls on both sides;
//! - [`cluster`]: throwaway PostgreSQL clusters for the demo and the tests;
//! - [`token`]: development keys and tokens;
//! - [`demo`]: `pg-proxy demo`.

pub mod admin;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod server;
pub mod session;
pub mod tls;
pub mod token;
pub mod upstream;
