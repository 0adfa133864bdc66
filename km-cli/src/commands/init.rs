//! `km init`: asks for (or takes) the Kilometers API key and endpoint and writes them to
//! `KM_HOME/config.toml` with mode 0600, keeping the rest of the file.
//!
//! Sources, first wins: `--api-key`/`--api-url`, `KM_API_KEY`/`KM_API_URL`, a prompt on the
//! terminal (on stderr, the key typed without echo; only when stdin is a terminal), then the
//! values already in the file, and for the endpoint the public API. Without a terminal and
//! without any key, it fails rather than waits.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::api::ApiClient;
use crate::cli::InitArgs;
use crate::commands::Globals;
use crate::config::{self, mask_key, Config, DEFAULT_API_URL, ENV_API_KEY, ENV_API_URL};

/// Runs `km init`.
pub(crate) fn run(globals: &Globals, args: InitArgs) -> Result<ExitCode> {
    let home = &globals.home;
    let existing = Config::load_file(&home.config_file()).unwrap_or_default();
    let interactive = std::io::stdin().is_terminal();
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());

    let api_key = match args.api_key.or_else(|| env(ENV_API_KEY)) {
        Some(key) => key,
        None if interactive => {
            let hint = existing
                .masked_api_key()
                .map(|m| format!(" [{m}]"))
                .unwrap_or_default();
            let answer = prompt_secret(&format!("Kilometers API key{hint}: "))?;
            match (answer.is_empty(), existing.api_key.clone()) {
                (true, Some(old)) => old,
                (true, None) => bail!("no API key given"),
                (false, _) => answer,
            }
        }
        // Re-running init without a terminal keeps the key already configured.
        None if existing.api_key.is_some() => existing.api_key.clone().unwrap_or_default(),
        None => bail!(
            "no API key given: pass --api-key KEY or set {ENV_API_KEY} (stdin is not a terminal, \
             so km cannot ask)"
        ),
    };
    let api_key = api_key.trim().to_owned();
    if api_key.is_empty() || api_key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("the API key must be non-empty and contain no spaces or control characters");
    }

    let current_url = existing
        .api_url
        .clone()
        .unwrap_or_else(|| DEFAULT_API_URL.to_owned());
    let api_url = match args.api_url.or_else(|| env(ENV_API_URL)) {
        Some(url) => url,
        None if interactive => {
            let answer = prompt(&format!("Kilometers API endpoint [{current_url}]: "))?;
            if answer.is_empty() {
                current_url
            } else {
                answer
            }
        }
        None => current_url,
    };
    let api_url = api_url.trim().to_owned();
    // The same rules the client applies (https, or http to loopback; pins need https; the CA
    // file readable), checked before writing.
    let checked = Config {
        api_url: Some(api_url.clone()),
        ..existing.clone()
    };
    ApiClient::for_config(&globals.runtime, &checked)
        .with_context(|| format!("checking the endpoint {api_url:?}"))?;

    config::write_settings(home, Some(&api_key), Some(&api_url))?;
    if !globals.quiet {
        eprintln!(
            "km: wrote {} (mode 0600): api_key {}, api_url {}",
            home.config_file().display(),
            mask_key(&api_key),
            api_url
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn prompt(question: &str) -> Result<String> {
    let mut stderr = std::io::stderr().lock();
    write!(stderr, "{question}")?;
    stderr.flush()?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the answer")?;
    Ok(line.trim().to_owned())
}

/// Like [`prompt`], with the terminal's echo off so that the key is not shown (restored
/// afterwards, also on error).
fn prompt_secret(question: &str) -> Result<String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let stdin = std::io::stdin();
    let Ok(saved) = tcgetattr(&stdin) else {
        return prompt(question);
    };
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    if tcsetattr(&stdin, OptionalActions::Now, &quiet).is_err() {
        return prompt(question);
    }
    let answer = prompt(question);
    let _ = tcsetattr(&stdin, OptionalActions::Now, &saved);
    eprintln!();
    answer
}
