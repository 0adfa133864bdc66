//! `km monitor -- CMD ARGS...`: turn the command line, `config.toml` and the environment into a
//! [`MonitorConfig`], verify and load the plugins, prepare them for the session, keep their
//! subscriptions refreshed, and hand over to [`crate::monitor::run`].

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;

use super::Globals;
use crate::api::ApiClient;
use crate::cli::MonitorArgs;
use crate::config::Config;
use crate::events::EventBus;
use crate::gateway::LoadedPlugin;
use crate::host::{ApiTransport, Verbosity};
use crate::loader::{load_plugins, LoadOptions};
use crate::monitor::banner::{Notices, Refused};
use crate::monitor::{self, MonitorConfig, Prepared, SessionInfo};
use crate::subscription;

/// Runs `km monitor`.
pub(crate) fn run(globals: &Globals, args: MonitorArgs) -> Result<ExitCode> {
    let notices = Notices::new(globals.quiet, globals.verbose);
    let _telemetry = crate::telemetry::start(
        &globals.runtime,
        &globals.home,
        &args.command,
        globals.quiet,
    );
    if args.no_plugins {
        let config = MonitorConfig::new(args.command, args.lossless, None)?;
        return monitor::run(
            &globals.runtime,
            &config,
            Prepared::default(),
            notices,
            None,
        );
    }
    let settings = Config::load(&globals.home)?;
    let config = MonitorConfig::new(args.command, args.lossless, Some(&settings))?;
    let client = ApiClient::for_config(&globals.runtime, &settings)?.map(Arc::new);
    // The refreshers honour the API's Retry-After through the client's rate limit.
    let rate_limit = client.as_ref().map(|c| c.rate_limit());
    let api: Option<Arc<dyn ApiTransport>> = client.map(|c| c as Arc<dyn ApiTransport>);
    let events = EventBus::new();
    let mut options = LoadOptions::new(
        args.plugins_dir
            .clone()
            .unwrap_or_else(|| globals.home.plugins_dir()),
        globals.home.clone(),
    );
    options.allow_downgrade = args.allow_downgrade;
    options.verbosity = Verbosity::from_flags(globals.quiet, globals.verbose);
    options.api = api;
    options.events = Some(events.clone());
    let report = load_plugins(&options)?;
    // The refused plugins are shown in the banner, and told to the others (an audit trail
    // records them).
    let refused: Vec<Refused> = report.refused.iter().map(Refused::from_refusal).collect();
    let prepared = monitor::prepare(
        report.loaded,
        refused,
        &globals.home,
        &settings,
        SessionInfo::new(&config.command),
        Some(events),
        notices,
    );
    // Subscriptions are checked and refreshed in the background for the whole session (a plugin
    // degrades on its own until it is authorized); dropping the handle stops the refreshers.
    let plugins: Vec<Arc<LoadedPlugin>> =
        prepared.plugins.iter().map(|p| p.plugin.clone()).collect();
    let _refresher = (!plugins.is_empty()).then(|| {
        subscription::start_refresher(
            &globals.runtime,
            &globals.home,
            &settings,
            plugins,
            rate_limit,
        )
    });
    monitor::run(
        &globals.runtime,
        &config,
        prepared,
        notices,
        Some(&globals.home),
    )
}
