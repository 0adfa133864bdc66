//! End-to-end tests: real cdylibs, signed with keys the tests make, loaded by the real `km`.
//! One binary, a module per topic. Run `cargo build --workspace` first (see README).

mod abi_compat;
mod advanced_filters;
mod chaos;
mod cli;
mod compliance;
mod distribution;
mod doctor;
mod hardening;
mod host_events;
mod inspector;
mod intercept;
mod interop;
mod loader;
mod loader_inproc;
mod ml_analytics;
mod monitor;
mod plugin_commands;
mod rate_limits;
mod runtime;
mod setup;
mod signing;
mod strict_modes;
mod subscription_security;
mod subscriptions;
mod team;
mod telemetry;
mod tool_guard;
mod transport;
mod wrap;
