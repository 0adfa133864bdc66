//! End-to-end tests: real cdylibs, signed with keys the tests make, loaded by the real `km`.
//! One binary, a module per topic. Run `cargo build --workspace` first (see README).

mod distribution;
mod intercept;
mod interop;
mod loader;
mod monitor;
mod signing;
mod subscriptions;
