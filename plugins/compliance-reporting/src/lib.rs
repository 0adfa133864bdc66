//! compliance-reporting (Enterprise tier).

#![deny(unsafe_code)]

pub mod content;
mod error;
pub mod keys;
pub mod policy;
pub mod record;
pub mod trail;
pub mod verify;

pub use error::Error;
