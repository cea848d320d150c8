//! whatsapp-gateway: a Pingora gateway in front of a Next.js app.
//!
//! `POST /api/whatsapp_sessions/{id}/disconnect` is answered natively ([`disconnect`]);
//! everything else is proxied to the Next.js upstream unchanged ([`proxy`]).

pub mod admin;
pub mod auth;
pub mod config;
pub mod disconnect;
pub mod durable;
pub mod fastpath;
pub mod h1;
pub mod journal;
pub mod locks;
pub mod metrics;
pub mod orchestrator;
pub mod proxy;
pub mod replay;
pub mod reply;
pub mod routes;
pub mod store;
