//! What every handler shares: the database, the signing key, the customers file watch, the
//! test controls and the request counters.
//!
//! Everything here is safe to use from many request threads at once: the store serialises its
//! own access (see [`crate::store`]), the controls and counters are atomics, and the customers
//! watch takes its own lock only while it checks the file.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::customers_file::CustomersFile;
use crate::keys::TokenSigner;
use crate::limits::{Rate, RateLimiter};
use crate::store::Store;
use crate::teams_dir::Teams;

/// How the next authentication answers are corrupted (`POST /control/tamper?mode=...`), to test
/// that plugins refuse them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Tamper {
    /// Honest answers.
    #[default]
    None,
    /// The answer claims `enterprise` while the token says otherwise.
    Tier,
    /// A 200 KiB answer.
    Oversized,
    /// A token that is not a string.
    Malformed,
    /// A token signed by a key that is not the server's.
    ForeignKey,
}

impl Tamper {
    /// Every mode, as the control spells it.
    pub(crate) const MODES: [(&'static str, Tamper); 5] = [
        ("none", Tamper::None),
        ("tier", Tamper::Tier),
        ("oversized", Tamper::Oversized),
        ("malformed", Tamper::Malformed),
        ("foreign-key", Tamper::ForeignKey),
    ];

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::MODES.iter().find(|(n, _)| *n == s).map(|(_, t)| *t)
    }

    pub(crate) fn as_str(self) -> &'static str {
        Self::MODES
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("none", |(n, _)| n)
    }
}

/// The test controls' switches (`/control/...` and `--delay-ms`, `--fail-after`).
#[derive(Debug, Default)]
pub(crate) struct Controls {
    /// Answer every `/api/` request with 503.
    pub(crate) down: AtomicBool,
    /// Wait this long before answering `/api/` requests.
    pub(crate) delay_ms: AtomicU64,
    /// Go down after this many `/api/` requests.
    pub(crate) fail_after: Option<u64>,
    pub(crate) tamper: Mutex<Tamper>,
}

impl Controls {
    pub(crate) fn tamper(&self) -> Tamper {
        // A poisoned lock still holds a valid mode: it is a plain value, written whole.
        *self
            .tamper
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn set_tamper(&self, mode: Tamper) {
        *self
            .tamper
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = mode;
    }
}

/// Counters since the server started (`GET /control/stats`).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) auth_requests: AtomicU64,
    pub(crate) auth_ok: AtomicU64,
    pub(crate) events_stored: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) api_requests: AtomicU64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) -> u64 {
        counter.fetch_add(n, Ordering::SeqCst) + n
    }
}

/// The state shared by every request.
pub(crate) struct AppState {
    pub(crate) store: Store,
    pub(crate) signer: TokenSigner,
    /// The customers file, when one was given; re-read when it changes.
    pub(crate) customers_file: Option<CustomersFile>,
    pub(crate) plugins_dir: Option<PathBuf>,
    /// Seconds.
    pub(crate) token_ttl: i64,
    pub(crate) controls: Controls,
    pub(crate) stats: Stats,
    /// `--rate-limit`, per customer.
    pub(crate) limiter: RateLimiter,
    /// `--abuse-threshold`.
    pub(crate) abuse_threshold: Rate,
    /// The teams directory and the team test controls.
    pub(crate) teams: Teams,
}

impl AppState {
    /// Brings the customers file's changes into the database, if it changed. A file that does
    /// not read or does not validate is reported on stderr and the customers already stored
    /// stay as they are, so a half-edited file never locks everyone out.
    pub(crate) fn refresh_customers(&self) {
        if let Some(file) = &self.customers_file {
            if let Err(e) = file.sync_if_changed(&self.store) {
                eprintln!("km-api-server: {e:#} (keeping the previous customers)");
            }
        }
    }

    /// Brings the teams directory's changes into the database, if it changed (each team that
    /// does not read keeps what it had; see [`crate::teams_dir`]).
    pub(crate) fn refresh_teams(&self) {
        self.teams.sync(&self.store);
    }
}
