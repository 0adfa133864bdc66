//! km-sign end to end: keys, signatures, openssl interoperability.
