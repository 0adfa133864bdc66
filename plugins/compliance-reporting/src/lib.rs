//! compliance-reporting (Enterprise tier): a tamper-evident audit trail of every MCP call,
//! signed checkpoints witnessed by the Kilometers API, and SOC 2 and GDPR reports.
//!
//! An auditor asks which tools the agents called, on whose behalf, what data left, what was
//! blocked, and whether the record could have been edited. This plugin answers from a trail it
//! writes in its data directory:
//!
//! - one record per request/response pair, per notification and per session event, verdict and
//!   other plugin's event ([`record`], [`recorder`]): who (OS user, host, team member), which
//!   server and tool, the outcome with the verdicts' rule ids, the categories of findings, sizes
//!   and SHA-256 digests of params and results. No content, unless capture is enabled, and then
//!   only encrypted per data subject so that it can be erased ([`content`]);
//! - records chained by hash and leaves of an RFC 6962 Merkle tree; checkpoints of the tree
//!   signed with an Ed25519 key made for the installation, at every session's end and
//!   periodically while one runs ([`trail`], [`keys`]), and sent to the API, which checks that
//!   each extends the last ([`witness`]);
//! - several sessions write one trail under a lock; what a killed km left is repaired and
//!   recorded ([`trail`]); a busy session writes what it gathered in the last 2 ms at once, one
//!   `write(2)` per file ([`batch`]);
//! - commands: `verify`, `report`, `verify-report`, `erase`, `show`, `key`, `status`
//!   ([`commands`]).
//!
//! Without a valid Enterprise subscription it records nothing (lines seen before the first
//! authentication are held in memory, bounded, until the answer is known: past the bound a line
//! waits for the answer, which holds km's relay back, and what can be neither held nor waited for
//! is counted in a `gap` record) and `km plugin-status` says why. Checking a trail or a report and erasing a data subject work
//! without one: they are duties that outlive a subscription.
//!
//! It asks km for lossless delivery, so that a flood of messages never costs a record; where
//! km is configured to refuse back-pressure, the gap km reports becomes a record itself.

#![deny(unsafe_code)]

pub mod batch;
pub mod commands;
pub mod content;
mod error;
pub mod keys;
pub mod policy;
pub mod record;
pub mod recorder;
pub mod report;
mod session;
pub mod trail;
pub mod verify;
pub mod witness;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use km_plugin_sdk::abi::Verdict;
use km_plugin_sdk::auth::now_unix;
use km_plugin_sdk::{
    AuthResponse, CommandOutput, Directions, Host, InterceptContext, Interest, KindSet, Message,
    Plugin, PluginConfig, PluginError, SessionInfo, StreamEvent, Subscription, SubscriptionState,
    Tier, VerdictAction,
};

pub use error::Error;

use crate::policy::Policy;
use crate::record::Actor;
use crate::session::{Input, InputRef, Recording};

km_plugin_sdk::credentials_region!();

/// The plugin's name.
pub const NAME: &str = "compliance-reporting";
/// Inputs held in memory while the first authentication is pending.
const MAX_EARLY: usize = 10_000;
/// How long an input that finds [`MAX_EARLY`] others held waits for the first authentication's
/// answer. The plugin asks for lossless delivery, so km holds the relay back meanwhile instead
/// of dropping; the wait stays well under km's limit for a lossless plugin that takes nothing
/// (10 s), after which km would stop waiting for it altogether.
const EARLY_WAIT: Duration = Duration::from_secs(5);
/// `detail.why` of the `gap` record of inputs that could be neither held nor waited for.
pub const EARLY_GAP_WHY: &str = "more arrived before the subscription's first answer than the recording holds (10000) or could wait for (5 s)";
/// The write-ahead hook's place in the chain of interceptors: after every other, so that what
/// it records is what km forwards.
const WRITE_AHEAD_PRIORITY: i32 = 1_000_000;
/// How often the background thread looks at the clock.
const TICK: Duration = Duration::from_millis(50);

/// The OS user and host km runs as.
pub fn local_actor() -> Actor {
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| format!("uid:{}", rustix::process::getuid().as_raw()));
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    Actor {
        user,
        host,
        member: None,
    }
}

/// What the handler threads and the background thread share.
pub(crate) struct Shared {
    pub(crate) host: Host,
    pub(crate) subscription: Subscription,
    pub(crate) data_dir: PathBuf,
    pub(crate) policy: Mutex<Policy>,
    /// Whether km has an API to witness checkpoints.
    pub(crate) api: AtomicBool,
    pub(crate) recording: Mutex<Option<Recording>>,
    /// Set when the trail cannot be opened, so that the warning is given once.
    pub(crate) broken: AtomicBool,
    /// Set while records cannot be written (cleared by the next one that is).
    pub(crate) failing: AtomicBool,
    /// The policy's `write_ahead`, read on every line.
    write_ahead: AtomicBool,
    early: Mutex<Vec<Input>>,
    /// Set when an input is held in `early` (or missed), so that the path of every line need not
    /// lock it.
    early_waiting: AtomicBool,
    /// Inputs that found `early` full and waited [`EARLY_WAIT`] in vain: a `gap` record once the
    /// recording starts.
    early_missed: AtomicU64,
    /// Set once an input waited in vain, so that the next ones do not each wait as long.
    early_gave_up: AtomicBool,
    /// The background thread's state and its wake-up: stopped, or nudged by a recording that
    /// left records or notes gathered (see [`batch`]).
    ticker_state: (Mutex<TickerState>, Condvar),
    /// Checkpoints for the witness, sent by the sender thread ([`witness`]'s module doc says
    /// why).
    outbox: witness::Outbox,
    /// Set while the sender thread runs; without it (a plugin command, or a thread the system
    /// refused) checkpoints are sent on the caller's thread.
    sending: AtomicBool,
}

/// What the background thread is told.
#[derive(Debug, Default)]
struct TickerState {
    stopped: bool,
    /// A recording left records or notes gathered, due to be written then (see [`batch`]).
    nudged: Option<Instant>,
}

/// The plugin.
pub struct ComplianceReporting {
    shared: Arc<Shared>,
    ticker: Mutex<Option<std::thread::JoinHandle<()>>>,
    sender: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Shared {
    fn state(&self) -> SubscriptionState {
        self.subscription.state(now_unix())
    }

    fn active(&self) -> bool {
        self.subscription.is_active(now_unix())
    }

    fn policy(&self) -> Policy {
        self.policy.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Handles an input now, holds it until the subscription is known, or drops it. The input
    /// is made (a line copied) only when it is kept.
    fn feed(&self, input: impl FnOnce() -> Input) {
        if self.active() {
            self.settle_early();
            self.process(input().as_ref());
            return;
        }
        self.hold(input);
    }

    /// Handles a line from km's buffer: copied only if it must be held.
    fn feed_line(&self, message: &Message<'_>) {
        if self.active() {
            self.settle_early();
            self.process(InputRef::Line(session::line_of(message)));
            return;
        }
        self.hold(|| Input::line(message));
    }

    /// Not active (or no longer): holds the input until the first answer, or drops it. With
    /// [`MAX_EARLY`] inputs held, waits for the answer (km holds the relay back: lossless
    /// delivery); what can be neither held nor waited for is counted, and recorded as a gap.
    fn hold(&self, input: impl FnOnce() -> Input) {
        let deadline = Instant::now() + EARLY_WAIT;
        loop {
            // The state is read under the lock of the held inputs, so that an input is never
            // held after [`Shared::settle_early`] emptied them for good.
            let Ok(mut early) = self.early.lock() else {
                return;
            };
            match self.state() {
                SubscriptionState::Active(_) => {
                    // Became active since the caller looked, or while it waited.
                    drop(early);
                    self.settle_early();
                    self.process(input().as_ref());
                    return;
                }
                SubscriptionState::Pending => {
                    if early.len() < MAX_EARLY {
                        early.push(input());
                        self.early_waiting.store(true, Ordering::Release);
                        return;
                    }
                    drop(early);
                    if self.early_gave_up.load(Ordering::Relaxed) || Instant::now() >= deadline {
                        self.early_gave_up.store(true, Ordering::Relaxed);
                        self.early_missed.fetch_add(1, Ordering::Relaxed);
                        self.early_waiting.store(true, Ordering::Release);
                        return;
                    }
                    // The answer comes on km's refresher thread, not this one.
                    std::thread::sleep(Duration::from_millis(5));
                }
                // Degraded: nothing is recorded and nothing kept.
                SubscriptionState::Degraded => {
                    early.clear();
                    self.early_missed.store(0, Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    /// Records the inputs held while the first authentication was pending, once it answered.
    ///
    /// Called by the first input after the answer (on km's worker thread) and by
    /// `authenticate` (on km's refresher thread), which may overlap: the held inputs are recorded
    /// under their lock, and the flag that says some are held is cleared only after, so that an
    /// input that finds the subscription active waits here for those before it (it finds the
    /// flag set, or finds them recorded) and the trail keeps the stream's order. (The flag used
    /// to be cleared first: the worker then recorded its newer line while the refresher was still
    /// recording the held ones.)
    fn settle_early(&self) {
        if !self.early_waiting.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut early) = self.early.lock() else {
            return;
        };
        if !self.early_waiting.load(Ordering::Acquire) {
            // Settled by the other thread while this one waited for the lock.
            return;
        }
        if self.active() {
            for input in early.drain(..) {
                self.process(input.as_ref());
            }
            let missed = self.early_missed.swap(0, Ordering::Relaxed);
            if missed > 0 {
                // Where the missed inputs would have been: after those held, before the next.
                let gap = Input::Event {
                    kind: km_plugin_sdk::StreamEventKind::GAP,
                    data: serde_json::json!({"missed": missed, "why": EARLY_GAP_WHY}),
                    timestamp_ms: i64::try_from(record::now_us() / 1000).unwrap_or(i64::MAX),
                };
                self.process(gap.as_ref());
            }
            self.early_gave_up.store(false, Ordering::Relaxed);
            self.early_waiting.store(false, Ordering::Release);
        } else if matches!(self.state(), SubscriptionState::Degraded) {
            early.clear();
            self.early_missed.store(0, Ordering::Relaxed);
            self.early_waiting.store(false, Ordering::Release);
        }
    }

    fn process(&self, input: InputRef<'_>) {
        let submissions = {
            let Ok(mut slot) = self.recording.lock() else {
                return;
            };
            session::process(self, &mut slot, input)
        };
        self.send(submissions);
    }

    /// Hands checkpoints to the witness: to the sender thread while it runs (never waiting),
    /// else sent here. Call outside the recording lock.
    pub(crate) fn send(&self, submissions: Vec<witness::Submission>) {
        if !self.api.load(Ordering::Relaxed) {
            return;
        }
        for submission in submissions {
            if self.sending.load(Ordering::Acquire) {
                self.outbox.put(submission);
            } else {
                self.submit(submission);
            }
        }
    }

    /// The sender thread: sends what the outbox holds until it is stopped.
    fn run_sender(&self) {
        while let Some(submission) = self.outbox.take() {
            self.submit(submission);
            self.outbox.done();
        }
    }

    /// Sends one checkpoint to the witness, its proof first brought up to date with what the
    /// API acknowledged since it was made, and once more from the size the API says it holds
    /// when that is another.
    fn submit(&self, submission: witness::Submission) {
        let Some(token) = self.subscription.current_token(now_unix()) else {
            return;
        };
        let size = submission.size();
        let acked = witness::WitnessState::load(&self.data_dir).acked;
        let Some(mut submission) = self.reprove(submission, acked) else {
            return;
        };
        for attempt in 0..2 {
            match witness::submit(&self.host, &token, &submission) {
                Ok(witness::Answer::Accepted) => {
                    let _ = witness::WitnessState { acked: size }.save(&self.data_dir);
                }
                Ok(witness::Answer::Latest(latest)) => {
                    let _ = witness::WitnessState { acked: latest }.save(&self.data_dir);
                    self.host.debug(&format!(
                        "{NAME}: the API holds the trail up to {latest} records; proving consistency from there"
                    ));
                    if attempt == 0 {
                        if let Some(again) = self.reprove(submission, latest) {
                            submission = again;
                            continue;
                        }
                    }
                }
                Ok(witness::Answer::Refused(why)) => {
                    self.host.warn(&format!(
                        "{NAME}: the API refused checkpoint of {size} records: {why}"
                    ));
                    if let Ok(mut slot) = self.recording.lock() {
                        session::note_refusal(self, &mut slot, size, &why);
                    }
                }
                Err(e) => self.host.debug(&format!(
                    "{NAME}: could not send checkpoint of {size} records to the API ({e}); the next one will carry the proof"
                )),
            }
            return;
        }
    }

    /// `submission` proving consistency from `acked`: as it is when it already does, with a
    /// proof from the trail's tree when it does not; `None` when the API already holds as much
    /// (another session's checkpoint got there first) or the tree cannot prove it (the
    /// submission is then sent as it is, and the API's answer says from where to prove next).
    fn reprove(&self, submission: witness::Submission, acked: u64) -> Option<witness::Submission> {
        let size = submission.size();
        if submission.from() == acked {
            return Some(submission);
        }
        if acked >= size {
            return None;
        }
        let proof = self
            .recording
            .lock()
            .ok()
            .and_then(|slot| session::consistency_proof(&slot, acked, size));
        Some(match proof {
            Some(proof) => submission.reproved(acked, &proof),
            None => submission,
        })
    }

    /// Tells the background thread that a recording left records or notes gathered, due to be
    /// written at `due`, so that they are written then even if no further input comes. Called
    /// under the recording lock (the background thread never takes this lock while it holds
    /// that one's).
    pub(crate) fn nudge(&self, due: Instant) {
        let (lock, cv) = &self.ticker_state;
        if let Ok(mut state) = lock.lock() {
            state.nudged = Some(state.nudged.map_or(due, |d| d.min(due)));
        }
        cv.notify_one();
    }

    /// The background thread: every [`TICK`], expired requests, syncs and periodic checkpoints
    /// ([`session::tick`]); when nudged, what a recording left gathered, once it is due.
    fn run_ticker(self: Arc<Self>) {
        let mut next_tick = Instant::now() + TICK;
        let mut batch_due: Option<Instant> = None;
        loop {
            {
                let (lock, cv) = &self.ticker_state;
                let Ok(mut state) = lock.lock() else { return };
                loop {
                    if state.stopped {
                        return;
                    }
                    if let Some(due) = state.nudged.take() {
                        batch_due = Some(batch_due.map_or(due, |d| d.min(due)));
                    }
                    let wake = batch_due.map_or(next_tick, |d| d.min(next_tick));
                    let now = Instant::now();
                    if now >= wake {
                        break;
                    }
                    let Ok((next, _)) = cv.wait_timeout(state, wake - now) else {
                        return;
                    };
                    state = next;
                }
            }
            let now = Instant::now();
            let tick = now >= next_tick;
            if tick {
                next_tick = now + TICK;
            }
            if tick && matches!(self.state(), SubscriptionState::Active(_)) {
                batch_due = None; // the tick writes everything gathered
                let submissions = {
                    let Ok(mut slot) = self.recording.lock() else {
                        return;
                    };
                    session::tick(&self, &mut slot)
                };
                self.send(submissions);
            } else if batch_due.is_some_and(|d| now >= d) {
                // Whatever the subscription's state: what was gathered was recorded.
                let Ok(mut slot) = self.recording.lock() else {
                    return;
                };
                batch_due = session::write_due(&self, &mut slot);
            }
        }
    }
}

impl ComplianceReporting {
    fn start_ticker(&self) {
        self.start_sender();
        let Ok(mut slot) = self.ticker.lock() else {
            return;
        };
        if slot.is_some() {
            return;
        }
        let shared = self.shared.clone();
        match std::thread::Builder::new()
            .name("compliance-reporting".into())
            .spawn(move || shared.run_ticker())
        {
            Ok(handle) => *slot = Some(handle),
            Err(e) => self.shared.host.warn(&format!(
                "{NAME}: cannot start its background thread ({e}): periodic checkpoints and syncs are off"
            )),
        }
    }

    fn start_sender(&self) {
        let Ok(mut slot) = self.sender.lock() else {
            return;
        };
        if slot.is_some() {
            return;
        }
        let shared = self.shared.clone();
        match std::thread::Builder::new()
            .name("compliance-reporting-witness".into())
            .spawn(move || shared.run_sender())
        {
            Ok(handle) => {
                self.shared.sending.store(true, Ordering::Release);
                *slot = Some(handle);
            }
            Err(e) => self.shared.host.warn(&format!(
                "{NAME}: cannot start its thread for the witness ({e}): checkpoints are sent to the API on the recording thread"
            )),
        }
    }

    /// The end of the session for the witness: waits for the last checkpoint's answer (at most
    /// [`witness::FLUSH_WAIT`]), then stops the sender. A sender still waiting for the API then
    /// is left to finish on its own (km never unloads a plugin's library, so its code stays).
    fn stop_sender(&self) {
        let flushed = self
            .shared
            .outbox
            .flush(Instant::now() + witness::FLUSH_WAIT);
        self.shared.outbox.stop();
        self.shared.sending.store(false, Ordering::Release);
        let handle = self.sender.lock().ok().and_then(|mut s| s.take());
        match handle {
            Some(handle) if flushed => {
                let _ = handle.join();
            }
            Some(_) => self.shared.host.debug(&format!(
                "{NAME}: the API did not answer the session's last checkpoint within {:?}; the next session's first checkpoint proves consistency from what it holds",
                witness::FLUSH_WAIT
            )),
            None => {}
        }
    }
}

impl Plugin for ComplianceReporting {
    const NAME: &'static str = NAME;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const REQUIRED_TIER: Tier = Tier::Enterprise;

    fn new(host: Host) -> Result<Self, PluginError> {
        let subscription = Subscription::new(
            NAME,
            env!("CARGO_PKG_VERSION"),
            Tier::Enterprise,
            km_credentials_region(),
        );
        let data_dir = host.data_dir();
        subscription.cache_in(data_dir.clone());
        // Nothing is opened yet: `km plugin-refresh` makes the plugin only to authenticate it.
        Ok(ComplianceReporting {
            shared: Arc::new(Shared {
                host,
                subscription,
                data_dir,
                policy: Mutex::new(Policy::default()),
                api: AtomicBool::new(false),
                recording: Mutex::new(None),
                broken: AtomicBool::new(false),
                failing: AtomicBool::new(false),
                write_ahead: AtomicBool::new(false),
                early: Mutex::new(Vec::new()),
                early_waiting: AtomicBool::new(false),
                early_missed: AtomicU64::new(0),
                early_gave_up: AtomicBool::new(false),
                ticker_state: (Mutex::new(TickerState::default()), Condvar::new()),
                outbox: witness::Outbox::default(),
                sending: AtomicBool::new(false),
            }),
            ticker: Mutex::new(None),
            sender: Mutex::new(None),
        })
    }

    fn authenticate(&self, api_key: &str) -> Result<AuthResponse, PluginError> {
        let response = self
            .shared
            .subscription
            .authenticate(&self.shared.host, api_key);
        self.shared.settle_early();
        Ok(response)
    }

    fn initialize(&self, config: &PluginConfig) -> Result<(), PluginError> {
        self.shared
            .api
            .store(!config.api_url.is_empty(), Ordering::Relaxed);
        let policy = match self.shared.host.read_policy(policy::POLICY_FILE) {
            Ok(Some(text)) => match Policy::parse(&text) {
                Ok(p) => p,
                Err(e) => {
                    // Recording goes on with the defaults: an audit trail that stops over a
                    // typo loses exactly what it exists to keep.
                    self.shared
                        .host
                        .warn(&format!("{NAME}: {e}; recording with the default policy"));
                    Policy::default()
                }
            },
            Ok(None) => Policy::default(),
            Err(e) => {
                self.shared.host.debug(&format!(
                    "{NAME}: cannot read its policy ({e}); using the defaults"
                ));
                Policy::default()
            }
        };
        self.shared
            .write_ahead
            .store(policy.write_ahead, Ordering::Relaxed);
        if let Ok(mut p) = self.shared.policy.lock() {
            *p = policy;
        }
        Ok(())
    }

    fn interest(&self) -> Interest {
        if self.shared.write_ahead.load(Ordering::Relaxed) {
            // Every line, both ways, passed after the others have decided; observing still,
            // for the stream events (lines are recorded in `intercept`, not twice).
            return Interest::interceptor(Directions::BOTH)
                .kinds(KindSet::ALL)
                .priority(WRITE_AHEAD_PRIORITY)
                .max_line(0, VerdictAction::PASS)
                .observe(true)
                .lossless(true);
        }
        Interest::observer().lossless(true)
    }

    fn intercept(
        &self,
        message: &Message<'_>,
        _context: &InterceptContext<'_>,
    ) -> Result<Verdict, PluginError> {
        if self.shared.write_ahead.load(Ordering::Relaxed) {
            self.shared.feed_line(message);
            if self.shared.broken.load(Ordering::Relaxed)
                || self.shared.failing.load(Ordering::Relaxed)
            {
                // The trail cannot take it: fail closed rather than let unrecorded traffic by.
                return Err(PluginError::failed("the audit trail cannot be written"));
            }
        }
        Ok(Verdict::pass())
    }

    fn begin_session(&self, info: &SessionInfo) -> Result<(), PluginError> {
        self.start_ticker();
        self.shared.feed(|| Input::Begin(info.clone()));
        Ok(())
    }

    fn handle_message(&self, message: &Message<'_>) -> Result<(), PluginError> {
        // With write-ahead the line was recorded before it was forwarded.
        if !self.shared.write_ahead.load(Ordering::Relaxed) {
            self.shared.feed_line(message);
        }
        Ok(())
    }

    fn handle_stream_event(&self, event: &StreamEvent) -> Result<(), PluginError> {
        if event.kind == km_plugin_sdk::StreamEventKind::START {
            // A km before ABI 1.1 has no begin_session: the start event begins the recording.
            self.start_ticker();
        }
        self.shared.feed(|| Input::event(event));
        Ok(())
    }

    fn shutdown(&self) -> Result<(), PluginError> {
        {
            let (lock, cv) = &self.shared.ticker_state;
            if let Ok(mut state) = lock.lock() {
                state.stopped = true;
            }
            cv.notify_all();
        }
        if let Some(handle) = self.ticker.lock().ok().and_then(|mut t| t.take()) {
            let _ = handle.join();
        }
        let submissions = match self.shared.recording.lock() {
            Ok(mut slot) => session::close(&self.shared, &mut slot),
            Err(_) => Vec::new(),
        };
        self.shared.send(submissions);
        self.stop_sender();
        Ok(())
    }

    fn command_help(&self) -> Option<String> {
        Some(commands::HELP.to_owned())
    }

    fn run_command(&self, args: &[String]) -> Result<CommandOutput, PluginError> {
        Ok(commands::run(&self.shared, args))
    }
}

km_plugin_sdk::export_plugin!(ComplianceReporting);
