//! km-sign. (Being built.)
fn main() {}
