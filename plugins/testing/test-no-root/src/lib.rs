//! A shared library that is not a km plugin: it exports a function but no root module, to prove
//! that km refuses it with a readable error.

#![forbid(unsafe_code)]

/// Something to export, so that the library is not empty.
pub fn not_a_plugin() -> u32 {
    42
}
