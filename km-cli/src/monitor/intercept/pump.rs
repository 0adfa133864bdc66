//! The pump of a direction some plugin intercepts: each line is read whole, judged by the chain,
//! and only then forwarded (or replaced, or answered), in order.
//!
//! A line no interceptor wants goes out at once, without a plugin call: consecutive ones are
//! written together and numbered together (numbering first, so that a request is registered
//! before the peer can answer it). A line some interceptor wants is judged job by job (one job,
//! or one per element of a batch), interceptor by interceptor. Earlier lines are written before
//! any plugin call, so a slow plugin never holds back what was already decided.
//!
//! A line longer than km's inspection limit is not buffered whole: from its first bytes km tells
//! what it can (its kind, id and method if they come first) and applies the `oversize` action of
//! every interceptor that may want it; if one blocks (the default), the line is dropped as it
//! arrives (a request is answered with an error, a response replaced by one), else it streams
//! through.
//!
//! Everything the pump needs lives in [`Pump`], so that the watchdog of [`super::baton`] can take
//! it during a call that overran its budget and carry on with [`resume`].

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use abi_stable::std_types::{ROption, RSlice, RStr};
use bytes::Bytes;
use km_abi::{
    Direction, InterceptContext, Message, MessageKind, StreamEventKind, Verdict, VerdictAction,
};

use super::baton::Baton;
use super::reply::{self, Blocked};
use super::Chain;
use crate::gateway::PluginFailure;
use crate::monitor::banner::Notices;
use crate::monitor::dispatch::Envelope;
use crate::monitor::frame::{Ending, Frame, Framer};
use crate::monitor::jsonrpc::{self, Scan, Text};
use crate::monitor::output::Output;
use crate::monitor::relay::{End, PumpEnd, PumpReport};
use crate::monitor::session::{now_us, Numbered, Observed, Session};

/// Forwarded bytes are written once this many wait (a long line streaming through).
const WRITE_FROM: usize = 1024 * 1024;

/// Everything an intercepting pump needs (see the module documentation).
pub(crate) struct Pump {
    direction: Direction,
    /// Read through [`End`], whatever kind of file the client gave (pipe, socket, terminal).
    input: End,
    framer: Framer,
    output: Arc<Output>,
    /// The other direction's output: answers to blocked requests go there.
    peer: Arc<Output>,
    chain: Arc<Chain>,
    session: Arc<Session>,
    baton: Arc<Baton<Pump>>,
    notices: Notices,
    session_id: Arc<str>,
    report: tokio::sync::mpsc::UnboundedSender<PumpReport>,
    /// Bytes forwarded.
    forwarded: u64,
    /// Decided bytes waiting to be written.
    out: Vec<u8>,
    /// Lines in `out` that no interceptor wanted, waiting to be numbered and queued.
    observed: Vec<Observed>,
    /// When the current chunk was read.
    read_at: Instant,
    timestamp_us: u64,
    /// The line being judged.
    work: Option<Work>,
    /// A line over the inspection limit going by: `true` while it streams through, `false`
    /// while it is dropped.
    long: Option<bool>,
    /// How the input ended, once it has.
    end: Option<PumpEnd>,
}

impl std::fmt::Debug for Pump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pump")
            .field("direction", &self.direction)
            .field("forwarded", &self.forwarded)
            .finish_non_exhaustive()
    }
}

/// What a pump is made of.
pub(crate) struct Parts {
    pub(crate) direction: Direction,
    pub(crate) input: File,
    pub(crate) output: Arc<Output>,
    pub(crate) peer: Arc<Output>,
    pub(crate) chain: Arc<Chain>,
    pub(crate) session: Arc<Session>,
    pub(crate) baton: Arc<Baton<Pump>>,
    pub(crate) notices: Notices,
    pub(crate) session_id: Arc<str>,
    pub(crate) report: tokio::sync::mpsc::UnboundedSender<PumpReport>,
}

/// One line under judgement.
#[derive(Debug)]
struct Work {
    /// The line as it was read (without its ending).
    line: Bytes,
    ending: Ending,
    numbered: Numbered,
    /// Whether the line is a batch (its jobs are its elements).
    batch: bool,
    jobs: Vec<Job>,
    /// The job being judged.
    current: usize,
}

/// One message under judgement: a line, or an element of a batch.
#[derive(Debug)]
struct Job {
    /// Its bytes as they stand (replaced by an interceptor, or as read).
    bytes: Bytes,
    replaced: bool,
    scan: Scan,
    /// The method interceptors match: its own, or for a response its request's.
    method: String,
    target: String,
    batch_index: Option<u32>,
    /// The next interceptor to consider.
    next: usize,
    blocked: Option<Blocked>,
    /// What interceptors did to it, for the verdict events.
    verdicts: Vec<(String, VerdictAction, Vec<String>, String)>,
}

impl Job {
    fn new(
        bytes: Bytes,
        scan: Scan,
        request: Option<(&str, &str)>,
        batch_index: Option<u32>,
    ) -> Self {
        let own = text(&bytes, &scan.method);
        let (method, target) = match (scan.kind, request) {
            (MessageKind::RESPONSE, Some((method, target))) => {
                (method.to_owned(), target.to_owned())
            }
            (MessageKind::RESPONSE, None) => (String::new(), String::new()),
            _ => {
                let target = text(&bytes, &jsonrpc::request_target(&bytes, &own, &scan.params));
                (own, target)
            }
        };
        Job {
            bytes,
            replaced: false,
            scan,
            method,
            target,
            batch_index,
            next: 0,
            blocked: None,
            verdicts: Vec::new(),
        }
    }

    fn raw_id(&self) -> Option<&[u8]> {
        self.scan.id.clone().and_then(|r| self.bytes.get(r))
    }
}

/// The decoded text of a JSON string inside `line`, or empty.
fn text(line: &[u8], range: &Option<std::ops::Range<usize>>) -> String {
    match range
        .clone()
        .and_then(|r| line.get(r))
        .and_then(jsonrpc::string_text)
    {
        Some(Text::Borrowed(s)) => s.to_owned(),
        Some(Text::Owned(s)) => s,
        None => String::new(),
    }
}

/// Starts an intercepting pump; it runs on the calling thread until its input ends.
pub(crate) fn start(parts: Parts) {
    let limit = parts.chain.limit();
    let pump = Box::new(Pump {
        direction: parts.direction,
        input: End::new(parts.input),
        framer: Framer::keeping_oversize(limit),
        output: parts.output,
        peer: parts.peer,
        chain: parts.chain,
        session: parts.session,
        baton: parts.baton,
        notices: parts.notices,
        session_id: parts.session_id,
        report: parts.report,
        forwarded: 0,
        out: Vec::new(),
        observed: Vec::new(),
        read_at: Instant::now(),
        timestamp_us: now_us(),
        work: None,
        long: None,
        end: None,
    });
    run(pump);
}

/// Carries a pump on after the watchdog took it from a call to interceptor `index` that overran
/// its budget.
pub(crate) fn resume(mut pump: Box<Pump>, index: usize) {
    let budget = pump.chain.interceptors()[index].budget;
    pump.failed(
        index,
        &format!("did not answer within its budget of {budget:?}"),
    );
    run(pump);
}

fn run(mut pump: Box<Pump>) {
    loop {
        if pump.work.is_some() {
            let Some(back) = judge(pump) else {
                // The watchdog took this pump over; another thread carries it on.
                return;
            };
            pump = back;
            pump.finish_work();
            continue;
        }
        if let Some(end) = pump.end.take() {
            pump.finish(end);
            return;
        }
        match pump.framer.next_frame() {
            Some(frame) => pump.take(frame),
            None => {
                pump.flush();
                if pump.end.is_none() {
                    pump.read();
                }
            }
        }
    }
}

/// Runs the chain on the pump's work until every job is decided; `None` when the watchdog took
/// the pump during a call.
fn judge(mut pump: Box<Pump>) -> Option<Box<Pump>> {
    let chain = pump.chain.clone();
    let direction = pump.direction;
    loop {
        let Some(work) = pump.work.as_mut() else {
            return Some(pump);
        };
        let Some(job) = work.jobs.get_mut(work.current) else {
            return Some(pump);
        };
        let Some(interceptor) = chain.interceptors().get(job.next) else {
            work.current += 1;
            continue;
        };
        let index = job.next;
        job.next += 1;
        if job.blocked.is_some() || !interceptor.wants(direction, job.scan.kind, &job.method) {
            continue;
        }
        if interceptor.is_disabled() {
            if !interceptor.fail_open {
                pump.block_current(index, &[], "the plugin failed earlier in this session");
            }
            continue;
        }
        if job.bytes.len() > interceptor.max_line {
            let len = job.bytes.len();
            if interceptor.oversize() == VerdictAction::BLOCK {
                pump.block_current(
                    index,
                    &["km-inspection-limit".to_owned()],
                    &format!("the message ({len} bytes) is longer than the plugin inspects"),
                );
            }
            continue;
        }
        if pump.out.len() >= WRITE_FROM {
            pump.flush();
        }
        if pump.end.is_some() {
            return Some(pump);
        }
        let call = pump.call_for(index)?;
        let baton = pump.baton.clone();
        let plugin = interceptor.plugin.clone();
        let (back, result) = baton.call(pump, index, interceptor.budget, move || call.run(&plugin));
        pump = back?;
        pump.apply(index, result);
    }
}

/// What one interceptor call reads: its own copies, never a borrow of the pump.
struct Call {
    bytes: Bytes,
    scan: Scan,
    numbered: Numbered,
    direction: Direction,
    timestamp_us: u64,
    method: String,
    target: String,
    batch_index: Option<u32>,
    session_id: Arc<str>,
}

impl Call {
    fn run(&self, plugin: &crate::gateway::LoadedPlugin) -> Result<Verdict, PluginFailure> {
        let line = &self.bytes[..];
        let raw = |range: &Option<std::ops::Range<usize>>| {
            range
                .clone()
                .and_then(|r| line.get(r))
                .and_then(|raw| std::str::from_utf8(raw).ok())
                .unwrap_or("")
        };
        let own_method = text(line, &self.scan.method);
        let correlation = self
            .numbered
            .correlation
            .filter(|_| self.batch_index.is_none())
            .map(|c| c.to_string())
            .unwrap_or_default();
        let message = Message {
            seq: self.numbered.seq,
            direction: self.direction,
            kind: self.scan.kind,
            is_error: self.scan.is_error,
            data: RSlice::from_slice(line),
            correlation_id: RStr::from_str(&correlation),
            id: RStr::from_str(raw(&self.scan.id)),
            method: RStr::from_str(&own_method),
            timestamp_us: self.timestamp_us,
            latency_us: match self.numbered.latency_us {
                Some(us) if self.batch_index.is_none() => ROption::RSome(us),
                _ => ROption::RNone,
            },
        };
        let context = InterceptContext {
            request_method: RStr::from_str(&self.method),
            target: RStr::from_str(&self.target),
            batch_index: match self.batch_index {
                Some(i) => ROption::RSome(i),
                None => ROption::RNone,
            },
            session_id: RStr::from_str(&self.session_id),
        };
        plugin.intercept(&message, &context)
    }
}

impl Pump {
    fn other(&self) -> Direction {
        match self.direction {
            Direction::Request => Direction::Response,
            Direction::Response => Direction::Request,
        }
    }

    fn read(&mut self) {
        let n = self.input.fill(&mut self.framer);
        self.read_at = Instant::now();
        self.timestamp_us = now_us();
        match n {
            Ok(0) => {
                if let Some(frame) = self.framer.finish() {
                    self.take(frame);
                }
                self.end = Some(PumpEnd::Eof);
            }
            Ok(_) => {}
            Err(e) => self.end = Some(PumpEnd::ReadFailed(e)),
        }
    }

    /// Numbers and queues the lines that went by (before anything else is numbered, and before
    /// they are written, so that their requests are registered before the peer can answer).
    fn number_passed(&mut self) {
        if !self.observed.is_empty() {
            self.session.observe(
                self.direction,
                &mut self.observed,
                self.read_at,
                self.timestamp_us,
                0,
            );
        }
    }

    /// Numbers what went by, then writes what was decided. Called before the pump blocks on its
    /// input, and when much waits; not before every plugin call (a write per line would cost more
    /// than the call), so a line waits at most for the calls on the lines after it in the same
    /// read, each within its budget.
    fn flush(&mut self) {
        self.number_passed();
        if self.out.is_empty() || self.end.is_some() {
            return;
        }
        match self.output.write(&self.out) {
            Ok(()) => self.forwarded += self.out.len() as u64,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.end = Some(PumpEnd::OutputClosed)
            }
            Err(e) => self.end = Some(PumpEnd::WriteFailed(e)),
        }
        self.out.clear();
    }

    /// Handles one frame: lines nobody wants go out; others become work.
    fn take(&mut self, frame: Frame) {
        match frame {
            Frame::Line(line) => self.take_line(line),
            Frame::OversizeStart(prefix) => self.take_long(prefix),
            Frame::OversizePart(bytes, last) => {
                if self.long == Some(true) {
                    self.out.extend_from_slice(&bytes);
                    if self.out.len() >= WRITE_FROM {
                        self.flush();
                    }
                }
                if last {
                    self.long = None;
                }
            }
            // A framer that keeps long lines never skips one.
            Frame::Oversize(_) => {}
        }
    }

    fn take_line(&mut self, line: Bytes) {
        let ending = self.framer.ending();
        let scan = jsonrpc::scan(&line);
        let chain = &self.chain;
        let direction = self.direction;
        // Whether an interceptor may want it; a response's method is its request's, which only
        // admission tells.
        let maybe = match scan.kind {
            MessageKind::RESPONSE => chain.interceptors().iter().any(|i| {
                i.interest.intercept.contains(direction)
                    && i.interest.kinds.contains(MessageKind::RESPONSE)
            }),
            MessageKind::BATCH => true,
            kind => chain.any_wants(direction, kind, &text(&line, &scan.method)),
        };
        if !maybe {
            self.out.extend_from_slice(&line);
            self.out.extend_from_slice(ending.bytes());
            self.observed.push(Observed { line, scan });
            return;
        }
        self.number_passed();
        let numbered = self
            .session
            .admit_now(direction, &line, &scan, self.read_at);
        let request = numbered
            .info
            .as_ref()
            .map(|info| (&*info.method, &*info.target));
        let jobs = if scan.kind == MessageKind::BATCH {
            jsonrpc::batch_elements(&line)
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, range)| {
                    let element = line.slice(range);
                    let scan = jsonrpc::scan(&element);
                    Job::new(element, scan, None, u32::try_from(i).ok())
                })
                .collect()
        } else {
            vec![Job::new(line.clone(), scan.clone(), request, None)]
        };
        let wanted = jobs
            .iter()
            .any(|job| self.chain.any_wants(direction, job.scan.kind, &job.method));
        if !wanted {
            self.out.extend_from_slice(&line);
            self.out.extend_from_slice(ending.bytes());
            self.deliver(&numbered, line, scan);
            return;
        }
        self.work = Some(Work {
            line,
            ending,
            numbered,
            batch: scan.kind == MessageKind::BATCH,
            jobs,
            current: 0,
        });
    }

    /// The first bytes of a line over the inspection limit: pass it or drop it as it comes.
    fn take_long(&mut self, prefix: Bytes) {
        self.number_passed();
        let direction = self.direction;
        let (kind, scan) = jsonrpc::scan_prefix(&prefix);
        let numbered = self
            .session
            .admit_now(direction, &prefix, &scan, self.read_at);
        let method = match kind {
            Some(MessageKind::RESPONSE) => numbered.info.as_ref().map(|i| i.method.to_string()),
            Some(_) => Some(text(&prefix, &scan.method)),
            None => None,
        };
        // Unknown kind or method: every interceptor of this direction may want it.
        let blocker = self.chain.interceptors().iter().find(|i| {
            let may_want = match (kind, &method) {
                (Some(kind), Some(method)) => i.wants(direction, kind, method),
                (Some(kind), None) => {
                    i.interest.intercept.contains(direction) && i.interest.kinds.contains(kind)
                }
                (None, _) => i.interest.intercept.contains(direction),
            };
            may_want && (i.oversize() == VerdictAction::BLOCK || (i.is_disabled() && !i.fail_open))
        });
        let Some(blocker) = blocker else {
            self.long = Some(true);
            self.out.extend_from_slice(&prefix);
            return;
        };
        self.long = Some(false);
        let blocked = Blocked::new(
            blocker.name(),
            &["km-inspection-limit".to_owned()],
            &format!(
                "the message is longer than km inspects ({} bytes)",
                self.chain.limit()
            ),
        );
        let id = scan.id.clone().and_then(|r| prefix.get(r));
        match kind {
            Some(MessageKind::REQUEST) => self.answer(&blocked.error_response(id)),
            Some(MessageKind::RESPONSE) if id.is_some() => {
                let error = blocked.error_response(id);
                self.out.extend_from_slice(&error);
                self.out.push(b'\n');
                let error = Bytes::from(error);
                let error_scan = jsonrpc::scan(&error);
                self.deliver(&numbered, error, error_scan);
            }
            _ => {}
        }
        self.verdict_event(
            &blocked.plugin,
            VerdictAction::BLOCK,
            &blocked.rules,
            &blocked.reason,
            kind.unwrap_or(MessageKind::NON_JSON),
            method.as_deref().unwrap_or(""),
            "",
            id,
            &numbered,
            None,
        );
    }

    /// The call to interceptor `index` for the current job.
    fn call_for(&self, _index: usize) -> Option<Call> {
        let work = self.work.as_ref()?;
        let job = work.jobs.get(work.current)?;
        Some(Call {
            bytes: job.bytes.clone(),
            scan: job.scan.clone(),
            numbered: work.numbered.clone(),
            direction: self.direction,
            timestamp_us: self.timestamp_us,
            method: job.method.clone(),
            target: job.target.clone(),
            batch_index: job.batch_index,
            session_id: self.session_id.clone(),
        })
    }

    fn current_job(&mut self) -> Option<&mut Job> {
        let work = self.work.as_mut()?;
        work.jobs.get_mut(work.current)
    }

    /// Applies interceptor `index`'s answer to the current job.
    fn apply(&mut self, index: usize, result: Result<Verdict, PluginFailure>) {
        let name = self.chain.interceptors()[index].name().to_owned();
        let verdict = match result {
            Ok(verdict) => verdict,
            Err(failure) => {
                let what = if failure.is_panic() {
                    "panicked".to_owned()
                } else {
                    format!("failed: {}", failure.error)
                };
                self.failed(index, &what);
                return;
            }
        };
        let rules: Vec<String> = verdict.rules.iter().map(|r| r.to_string()).collect();
        let reason = verdict.reason.to_string();
        match verdict.action.effective() {
            VerdictAction::PASS => {}
            VerdictAction::REPLACE => {
                let data = verdict.data.into_vec();
                if memchr::memchr(b'\n', &data).is_some() {
                    self.failed(index, "replaced a line with more than one line");
                    return;
                }
                if let Some(job) = self.current_job() {
                    let bytes = Bytes::from(data);
                    job.scan = jsonrpc::scan(&bytes);
                    job.bytes = bytes;
                    job.replaced = true;
                    job.verdicts
                        .push((name, VerdictAction::REPLACE, rules, reason));
                }
            }
            _ => {
                if let Some(job) = self.current_job() {
                    job.blocked = Some(Blocked::new(&name, &rules, &reason));
                    job.verdicts
                        .push((name, VerdictAction::BLOCK, rules, reason));
                }
            }
        }
    }

    /// Interceptor `index` failed on the current job: it is disabled for the session (reported
    /// once), and the job is blocked unless it fails open.
    fn failed(&mut self, index: usize, what: &str) {
        let interceptor = &self.chain.interceptors()[index];
        let fail_open = interceptor.fail_open;
        if interceptor.disable() {
            self.notices.error(&format!(
                "plugin {} {what} while intercepting; it is disabled for this session, and what it intercepts is {}",
                interceptor.name(),
                if fail_open { "let through (it fails open)" } else { "blocked" }
            ));
            self.session.host_event(serde_json::json!({
                "event": "disabled",
                "plugin": interceptor.name(),
                "reason": format!("intercept: {what}"),
            }));
        }
        if !fail_open {
            self.block_current(index, &[], "the plugin failed to inspect this message");
        }
    }

    fn block_current(&mut self, index: usize, rules: &[String], reason: &str) {
        let name = self.chain.interceptors()[index].name().to_owned();
        if let Some(job) = self.current_job() {
            job.blocked = Some(Blocked::new(&name, rules, reason));
            job.verdicts.push((
                name,
                VerdictAction::BLOCK,
                rules.to_vec(),
                reason.to_owned(),
            ));
        }
    }

    /// Puts the decided line out: forwarded as it stands, or answered, replaced or dropped.
    fn finish_work(&mut self) {
        let Some(work) = self.work.take() else {
            return;
        };
        if let [job] = work.jobs.as_slice() {
            if !work.batch && job.blocked.is_none() && !job.replaced && job.verdicts.is_empty() {
                // Passed untouched: the line as it came, no copy, no second scan.
                self.out.extend_from_slice(&work.line);
                self.out.extend_from_slice(work.ending.bytes());
                let Work {
                    line,
                    numbered,
                    jobs,
                    ..
                } = work;
                let scan = jobs
                    .into_iter()
                    .next()
                    .map(|job| job.scan)
                    .unwrap_or_else(|| jsonrpc::scan(&line));
                self.deliver(&numbered, line, scan);
                return;
            }
        }
        let mut errors = Vec::new();
        let line: Option<Vec<u8>> = if work.batch {
            let mut elements = Vec::new();
            for job in &work.jobs {
                match (&job.blocked, job.scan.kind) {
                    (None, _) => elements.push(job.bytes.to_vec()),
                    (Some(b), MessageKind::REQUEST) => errors.push(b.error_response(job.raw_id())),
                    (Some(b), MessageKind::RESPONSE) => {
                        elements.push(b.error_response(job.raw_id()))
                    }
                    (Some(_), _) => {}
                }
            }
            let unchanged = work.jobs.iter().all(|j| j.blocked.is_none() && !j.replaced);
            if unchanged {
                // Not re-serialised: the line goes out as it came.
                Some(work.line.to_vec())
            } else if elements.is_empty() {
                None
            } else {
                Some(reply::rebuild_batch(&elements))
            }
        } else {
            let job = &work.jobs[0];
            match (&job.blocked, job.scan.kind) {
                (None, _) => Some(job.bytes.to_vec()),
                (Some(b), MessageKind::REQUEST) => {
                    errors.push(b.error_response(job.raw_id()));
                    None
                }
                (Some(b), MessageKind::RESPONSE) => Some(b.error_response(job.raw_id())),
                (Some(_), _) => None,
            }
        };
        // Observers hear what was decided before they see the line it was decided on (and the
        // answer to a blocked request), as they heard the interceptors' own findings during the
        // calls: an audit trail then joins them to the line without waiting.
        for job in &work.jobs {
            for (plugin, action, rules, reason) in &job.verdicts {
                self.verdict_event(
                    plugin,
                    *action,
                    rules,
                    reason,
                    job.scan.kind,
                    &job.method,
                    &job.target,
                    job.raw_id(),
                    &work.numbered,
                    job.batch_index,
                );
            }
        }
        if let Some(answer) = reply::batch_answer(errors) {
            self.answer(&answer);
        }
        if let Some(line) = line {
            self.out.extend_from_slice(&line);
            self.out.extend_from_slice(work.ending.bytes());
            let line = Bytes::from(line);
            let scan = jsonrpc::scan(&line);
            self.deliver(&work.numbered, line, scan);
        }
    }

    /// Sends `line` (an error response) back to the side this pump reads from, and shows it to
    /// the observers as what that side received.
    fn answer(&mut self, line: &[u8]) {
        let mut with_newline = line.to_vec();
        with_newline.push(b'\n');
        if let Err(e) = self.peer.inject(&with_newline) {
            self.notices
                .detail(&format!("could not answer a blocked message: {e}"));
        }
        let line = Bytes::copy_from_slice(line);
        let scan = jsonrpc::scan(&line);
        let other = self.other();
        let numbered = self.session.admit_now(other, &line, &scan, Instant::now());
        self.session
            .deliver(envelope(other, &numbered, line, scan, now_us()));
    }

    fn deliver(&self, numbered: &Numbered, line: Bytes, scan: Scan) {
        self.session.deliver(envelope(
            self.direction,
            numbered,
            line,
            scan,
            self.timestamp_us,
        ));
    }

    #[allow(clippy::too_many_arguments)]
    fn verdict_event(
        &self,
        plugin: &str,
        action: VerdictAction,
        rules: &[String],
        reason: &str,
        kind: MessageKind,
        method: &str,
        target: &str,
        id: Option<&[u8]>,
        numbered: &Numbered,
        batch_index: Option<u32>,
    ) {
        let direction = match self.direction {
            Direction::Request => "client_to_server",
            Direction::Response => "server_to_client",
        };
        #[rustfmt::skip]
        crate::telemetry::verdict(plugin, action, rules, reason, kind, method, target, id, numbered.correlation, self.timestamp_us);
        self.session.event(
            StreamEventKind::VERDICT,
            serde_json::json!({
                "plugin": plugin,
                "action": action.as_str(),
                "rules": rules,
                "reason": reason,
                "direction": direction,
                "kind": kind.as_str(),
                "method": method,
                "target": target,
                "id": id.map(|id| String::from_utf8_lossy(id).into_owned()),
                "correlation_id": numbered.correlation.map(|c| c.to_string()),
                "batch_index": batch_index,
            }),
        );
    }

    fn finish(mut self: Box<Self>, end: PumpEnd) {
        let end = match end {
            PumpEnd::Eof => {
                self.flush();
                self.end.take().unwrap_or(PumpEnd::Eof)
            }
            other => other,
        };
        if let Err(e) = self.output.close() {
            self.notices.detail(&format!("closing the output: {e}"));
        }
        // Nothing more will come from this side: nobody needs to wait for it.
        self.session.observe(
            self.direction,
            &mut Vec::new(),
            Instant::now(),
            now_us(),
            u64::MAX,
        );
        let _ = self.report.send(PumpReport {
            direction: self.direction,
            end,
            bytes: self.forwarded,
        });
    }
}

fn envelope(
    direction: Direction,
    numbered: &Numbered,
    line: Bytes,
    scan: Scan,
    timestamp_us: u64,
) -> Envelope {
    Envelope {
        seq: numbered.seq,
        direction,
        kind: scan.kind,
        is_error: scan.is_error,
        line,
        id: scan.id,
        method: scan.method,
        correlation: numbered.correlation,
        timestamp_us,
        latency_us: numbered.latency_us,
    }
}
