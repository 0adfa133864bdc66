//! The external copy of the checkpoints: the Kilometers API as a witness.
//!
//! Every checkpoint is also sent to `POST {api}/api/audit/checkpoints` (through km's HTTP
//! service, with the subscription token), with the audit public key and the RFC 6962
//! consistency proof from the last checkpoint the API acknowledged:
//!
//! ```json
//! {"key_id": "...", "public_key": "BASE64", "host": "...", "user": "...",
//!  "checkpoint": "km-audit-checkpoint v1\n...", "signature": "BASE64",
//!  "from": 120, "proof": ["hex", ...]}
//! ```
//!
//! The API checks the signature and the proof against the last checkpoint it holds for that key,
//! and answers `409` with `{"latest": N}` when `from` is not what it holds (then the next
//! checkpoint carries a proof from N) or `422` when the proof fails: the trail was rewritten.
//! `verify` reads them back with `GET {api}/api/audit/checkpoints?key_id=ID&host=H&user=U`:
//! `{"checkpoints": [{"checkpoint", "signature", "received_at"}], "other_keys": [{"key_id",
//! "size", "received_at"}]}`, `other_keys` being other audit keys the API holds for the same
//! host and user (a trail replaced together with its key).
//!
//! The witness is best effort while a session runs (a failed send is retried with the next
//! checkpoint, which proves consistency with the last acknowledged one), and recording never
//! waits on it: checkpoints leave through an [`Outbox`] that a thread of the plugin's own empties.
//!
//! # Why a thread of its own
//!
//! The recording thread used to send each checkpoint itself, every `checkpoint_records`
//! (1 000) records, and wait for the answer: the API's latency was on the path of every
//! thousandth message, and with lossless delivery km holds the MCP relay back while the plugin
//! waits. In km-bench's small-mix floods that wait met a km bug (fixed in km's monitor: releasing
//! held lines blocked a runtime worker that the API request needed) and each checkpoint could
//! stall the session for km's 10 s stall limit. Now the recording thread leaves the submission in
//! the outbox and goes on; a slow or absent API costs the recording nothing.
//!
//! The outbox holds one submission, the newest: a newer checkpoint proves consistency from what
//! the API acknowledged, so an older one never sent is not needed by the witness (it stays in the
//! local trail's `checkpoints.jsonl`), and an API slower than the recording costs neither memory
//! nor time. A submission made while the one before was in flight proves from an older size than
//! the API will then hold; the sender brings its proof up to date first ([`Outbox`]'s owner does,
//! with the trail's tree). At the session's end the plugin waits for the last checkpoint's answer,
//! at most [`FLUSH_WAIT`].

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use km_audit::{AuditKey, Hash, SignedCheckpoint};
use km_plugin_sdk::abi_stable::std_types::{RString, Tuple2};
use km_plugin_sdk::{Host, HttpRequest};
use serde::{Deserialize, Serialize};

use crate::record::Actor;
use crate::verify::Witnessed;
use crate::Error;

/// The API path.
pub const PATH: &str = "/api/audit/checkpoints";
/// How long one request to the witness may take.
const TIMEOUT_MS: u32 = 3000;
/// How long the end of a session waits for its last checkpoint to reach the witness: under the
/// 5 s km gives a plugin's shutdown, and above one request's [`TIMEOUT_MS`].
pub const FLUSH_WAIT: Duration = Duration::from_millis(4000);

/// What the plugin remembers of the witness: the size of the last checkpoint it acknowledged.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WitnessState {
    /// The size of the last checkpoint the API acknowledged (or reported as its latest).
    pub acked: u64,
}

fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join("witness.json")
}

impl WitnessState {
    /// Reads the state (the default when there is none).
    pub fn load(data_dir: &Path) -> WitnessState {
        std::fs::read(state_path(data_dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Saves the state atomically.
    pub fn save(&self, data_dir: &Path) -> Result<(), Error> {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        Ok(km_durable::write_atomic(
            &state_path(data_dir),
            &bytes,
            km_durable::PRIVATE,
        )?)
    }
}

/// A checkpoint ready to send.
#[derive(Debug, Clone, Serialize)]
pub struct Submission {
    key_id: String,
    public_key: String,
    host: String,
    user: String,
    checkpoint: String,
    signature: String,
    from: u64,
    proof: Vec<String>,
}

impl Submission {
    /// The body for `signed`, proving consistency from `from` with `proof`.
    pub fn new(
        key: &AuditKey,
        actor: &Actor,
        signed: &SignedCheckpoint,
        from: u64,
        proof: &[Hash],
    ) -> Self {
        let json = signed.to_json();
        Submission {
            key_id: key.id().to_owned(),
            public_key: STANDARD.encode(key.public_key()),
            host: actor.host.clone(),
            user: actor.user.clone(),
            checkpoint: json.checkpoint,
            signature: json.signature,
            from,
            proof: proof.iter().map(hex::encode).collect(),
        }
    }

    /// The size the submission covers.
    pub fn size(&self) -> u64 {
        km_audit::Checkpoint::parse(&self.checkpoint).map_or(0, |c| c.size)
    }

    /// The size its proof starts from.
    pub fn from(&self) -> u64 {
        self.from
    }

    /// The same checkpoint, proving consistency from `from` with `proof` instead.
    pub fn reproved(mut self, from: u64, proof: &[Hash]) -> Self {
        self.from = from;
        self.proof = proof.iter().map(hex::encode).collect();
        self
    }
}

#[derive(Debug, Default)]
struct Slot {
    next: Option<Submission>,
    /// A submission is being sent.
    busy: bool,
    stopped: bool,
}

/// The checkpoints waiting for the sender thread: the newest only (see the module doc).
#[derive(Debug, Default)]
pub struct Outbox {
    slot: Mutex<Slot>,
    changed: Condvar,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        // The slot holds no invariant a panic elsewhere could break.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Leaves `submission` for the sender, in place of one it has not taken yet. Never waits
    /// for the network.
    pub fn put(&self, submission: Submission) {
        self.lock().next = Some(submission);
        self.changed.notify_all();
    }

    /// The sender's turn: the next submission, once there is one; `None` once stopped.
    pub fn take(&self) -> Option<Submission> {
        let mut slot = self.lock();
        loop {
            if let Some(next) = slot.next.take() {
                slot.busy = true;
                return Some(next);
            }
            if slot.stopped {
                return None;
            }
            slot = self
                .changed
                .wait(slot)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The sender is done with what it took.
    pub fn done(&self) {
        self.lock().busy = false;
        self.changed.notify_all();
    }

    /// Waits until everything put was sent (answered or failed), at most until `deadline`;
    /// whether it was.
    pub fn flush(&self, deadline: Instant) -> bool {
        let mut slot = self.lock();
        while slot.next.is_some() || slot.busy {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            slot = self
                .changed
                .wait_timeout(slot, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Ends the sender once it has sent what it holds.
    pub fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }
}

/// What the witness answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Stored.
    Accepted,
    /// It holds another latest size for this key: prove from there next time.
    Latest(u64),
    /// It refused the checkpoint (the proof or the signature failed): the reason.
    Refused(String),
}

#[derive(Deserialize)]
struct Conflict {
    latest: u64,
}

fn header(name: &str, value: &str) -> Tuple2<RString, RString> {
    Tuple2(name.into(), value.into())
}

/// Sends a submission.
pub fn submit(host: &Host, token: &str, submission: &Submission) -> Result<Answer, String> {
    let body = serde_json::to_vec(submission).unwrap_or_default();
    let mut request = HttpRequest::post_json(PATH, body);
    request
        .headers
        .push(header("authorization", &format!("Bearer {token}")));
    request.timeout_ms = TIMEOUT_MS;
    let response = host.http(request).map_err(|e| e.to_string())?;
    match response.status {
        200..=299 => Ok(Answer::Accepted),
        409 => serde_json::from_slice::<Conflict>(response.body.as_slice())
            .map(|c| Answer::Latest(c.latest))
            .map_err(|_| "HTTP 409 without the latest size".to_owned()),
        400 | 422 => Ok(Answer::Refused(
            String::from_utf8_lossy(response.body.as_slice())
                .chars()
                .take(300)
                .collect(),
        )),
        status => Err(format!("HTTP {status}")),
    }
}

#[derive(Deserialize)]
struct Held {
    checkpoint: String,
    signature: String,
    #[serde(default)]
    received_at: String,
}

/// Another audit key the witness holds for the same host and user.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct OtherKey {
    /// Its id.
    pub key_id: String,
    /// The size of its last checkpoint.
    #[serde(default)]
    pub size: u64,
    /// When the witness received that checkpoint.
    #[serde(default)]
    pub received_at: String,
}

#[derive(Deserialize)]
struct Listing {
    #[serde(default)]
    checkpoints: Vec<Held>,
    #[serde(default)]
    other_keys: Vec<OtherKey>,
}

fn escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The checkpoints the witness holds for `key_id`, and the other keys of `actor`'s host and user.
pub fn fetch(
    host: &Host,
    token: &str,
    key_id: &str,
    actor: &Actor,
) -> Result<(Vec<Witnessed>, Vec<OtherKey>), String> {
    let path = format!(
        "{PATH}?key_id={}&host={}&user={}",
        escape(key_id),
        escape(&actor.host),
        escape(&actor.user)
    );
    let request = HttpRequest {
        method: "GET".into(),
        path: path.as_str().into(),
        headers: vec![header("authorization", &format!("Bearer {token}"))].into(),
        body: Vec::new().into(),
        timeout_ms: 10_000,
    };
    let response = host.http(request).map_err(|e| e.to_string())?;
    if response.status != 200 {
        return Err(format!("HTTP {}", response.status));
    }
    let listing: Listing = serde_json::from_slice(response.body.as_slice())
        .map_err(|e| format!("the API's answer is not a checkpoint list ({e})"))?;
    let mut held = Vec::new();
    for h in listing.checkpoints {
        let signed = SignedCheckpoint::from_json(&km_audit::SignedCheckpointJson {
            checkpoint: h.checkpoint,
            signature: h.signature,
        })
        .map_err(|e| format!("the API holds a malformed checkpoint ({e})"))?;
        held.push(Witnessed {
            signed,
            received: h.received_at,
        });
    }
    Ok((held, listing.other_keys))
}
