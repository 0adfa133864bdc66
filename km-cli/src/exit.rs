//! The exit codes km documents (see README). `km monitor` exits with its child's status
//! instead (128+N when signal N ended it; 127 when the command is not found, 126 when it cannot
//! be executed); a plugin command with the plugin's code.

/// Success; for `verify-plugin`, every plugin verified.
pub const OK: u8 = 0;
/// A verification said no.
pub const REFUSED: u8 = 1;
/// A usage, I/O or other error.
pub const ERROR: u8 = 2;
