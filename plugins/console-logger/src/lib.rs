//! console-logger (being built)
