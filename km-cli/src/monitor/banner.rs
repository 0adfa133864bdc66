//! What the monitor says on stderr: the plugin banner, warnings, errors and `-v` detail.
//!
//! stdout carries the MCP stream and belongs to the server, so every word km has for the user goes
//! through [`Notices`] to stderr. Each line is written with one `write` under stderr's lock, so
//! lines from plugin workers and the relay never interleave mid-line.

use std::io::Write;

use crate::gateway::LoadedPlugin;

/// km's voice on stderr, honouring `-q` and `-v`.
#[derive(Debug, Clone, Copy)]
pub struct Notices {
    quiet: bool,
    verbose: u8,
}

impl Notices {
    /// Notices for `-q` / `-v` (a count).
    pub const fn new(quiet: bool, verbose: u8) -> Self {
        Notices { quiet, verbose }
    }

    /// The `-v` count.
    pub(crate) fn verbose(&self) -> u8 {
        self.verbose
    }

    /// Always shown.
    pub(crate) fn error(&self, text: &str) {
        write_line(&format!("km: error: {text}"));
    }

    /// Shown unless `-q`.
    pub(crate) fn warn(&self, text: &str) {
        if !self.quiet {
            write_line(&format!("km: warning: {text}"));
        }
    }

    /// Shown unless `-q`, without a prefix (the banner).
    pub(crate) fn info(&self, text: &str) {
        if !self.quiet {
            write_line(text);
        }
    }

    /// Shown with `-v`.
    pub(crate) fn detail(&self, text: &str) {
        if self.verbose > 0 {
            write_line(&format!("km: {text}"));
        }
    }
}

fn write_line(text: &str) {
    let mut line = String::with_capacity(text.len() + 1);
    line.push_str(text);
    line.push('\n');
    // Nothing sensible is left to do when stderr itself is gone.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// A plugin that was not loaded (or not initialized), for the banner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    /// The library's file name (or the plugin's name).
    pub(crate) file: String,
    /// Which check said no (shown with `-v`).
    pub(crate) check: String,
    /// Why, for the user.
    pub(crate) reason: String,
}

impl Refused {
    /// A loader refusal as the banner shows it.
    pub(crate) fn from_refusal(refusal: &crate::loader::Refusal) -> Self {
        let file = refusal
            .path
            .file_name()
            .unwrap_or(refusal.path.as_os_str())
            .to_string_lossy();
        // A refusal about a signature file is about its library: name the library.
        let file = file
            .strip_suffix(crate::loader::SIGNATURE_SUFFIX)
            .unwrap_or(&file);
        Refused {
            file: file.to_owned(),
            check: refusal.check.to_string(),
            reason: refusal.reason.clone(),
        }
    }
}

/// The banner: one line per loaded plugin (`✓`) and per refused one (`✗`).
pub(crate) fn banner(
    plugins: &[std::sync::Arc<LoadedPlugin>],
    refused: &[Refused],
    verbose: u8,
) -> String {
    let n = plugins.len();
    let mut out = format!(
        "[PluginHandler] Loaded {n} plugin{}",
        if n == 1 { "" } else { "s" }
    );
    if n > 0 || !refused.is_empty() {
        out.push(':');
    }
    for plugin in plugins {
        out.push_str(&format!(
            "\n  ✓ {} v{} ({} tier)",
            plugin.name(),
            plugin.version(),
            plugin.tier()
        ));
        if verbose > 0 {
            out.push_str(&format!(
                "\n      {} sha256 {} signed by {}",
                plugin.path().display(),
                plugin.sha256(),
                signer(plugin)
            ));
        }
    }
    for refusal in refused {
        out.push_str(&format!("\n  ✗ {}: {}", refusal.file, refusal.reason));
        if verbose > 0 && !refusal.check.is_empty() {
            out.push_str(&format!(" [check: {}]", refusal.check));
        }
    }
    out
}

fn signer(plugin: &LoadedPlugin) -> String {
    let signer = plugin.signer();
    if signer.label.is_empty() {
        signer.key_id.clone()
    } else {
        format!("{} ({})", signer.key_id, signer.label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_lists_refusals() {
        let refused = vec![Refused {
            file: "libx.so".into(),
            check: "signature".into(),
            reason: "bad signature".into(),
        }];
        assert_eq!(
            banner(&[], &refused, 0),
            "[PluginHandler] Loaded 0 plugins:\n  ✗ libx.so: bad signature"
        );
        assert_eq!(
            banner(&[], &refused, 1),
            "[PluginHandler] Loaded 0 plugins:\n  ✗ libx.so: bad signature [check: signature]"
        );
        assert_eq!(banner(&[], &[], 0), "[PluginHandler] Loaded 0 plugins");
    }
}
