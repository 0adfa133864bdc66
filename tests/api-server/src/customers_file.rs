//! The customers file (`--customers`): its format, its checks, and how its changes reach the
//! database.
//!
//! ```json
//! {"customers": [{"id": "cust_a", "api_key_sha256": "<hex SHA-256 of the API key>",
//!                 "tier": "pro", "features": ["api_logging"], "subscription_end": 1893456000,
//!                 "customer_token": "the customer secret stamped into this customer's builds",
//!                 "seats": 3}]}
//! ```
//!
//! `customer_token` is the customer secret the customer's builds are stamped with (`km-sign
//! build-plugin --customer-token`): the API derives their build keys and request keys from it, so
//! a customer without one cannot use customer builds. `seats` limits how many installations (km
//! device identities) may use the subscription at once; without it there is no limit.
//!
//! JSON, or TOML with `[[customers]]` tables when the name ends in `.toml`. Unknown fields are
//! refused (a misspelt `customer_token` would otherwise silently turn a check off). It is read at
//! start (a file that does not read is a start-up error) and checked again before every request
//! that looks a customer up; when its identity, size or modification time moved, it is read and
//! applied to the database by the rule in [`crate::store::customers`]: the file is the source of
//! truth for the customers it lists, an entry is applied when it changes, and a customer it no
//! longer lists stops authenticating. A changed file that does not read or validate is reported
//! on stderr and applied on a later check once it is fixed; the database keeps what it had.
//! Tests downgrade a subscription by rewriting this file (written aside and renamed).

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anyhow::{bail, Context as _};
use km_plugin_sdk::Tier;
use serde::{Deserialize, Serialize};

use crate::store::customers::{Customer, FileCustomer, SyncReport};
use crate::store::Store;

/// One entry of the file, as written there.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    api_key_sha256: String,
    tier: String,
    #[serde(default)]
    features: Vec<String>,
    subscription_end: i64,
    #[serde(default)]
    customer_token: Option<String>,
    /// Left out of the entry's digest when absent, so that entries written before seats existed
    /// keep their digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seats: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    customers: Vec<Entry>,
}

/// What identifies one version of the file on disk: device, inode (a rename replaces it),
/// size, modification time in nanoseconds.
type Stamp = (u64, u64, u64, i64, i64);

/// The customers file, with the stamp of the version last applied.
#[derive(Debug)]
pub(crate) struct CustomersFile {
    path: PathBuf,
    applied: Mutex<Option<Stamp>>,
}

fn stamp(path: &Path) -> anyhow::Result<Stamp> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
    ))
}

/// Parses and checks the file's text; `toml` chooses the syntax.
pub(crate) fn parse(text: &str, toml: bool) -> anyhow::Result<Vec<FileCustomer>> {
    let document: Document = if toml {
        toml::from_str(text)?
    } else {
        serde_json::from_str(text)?
    };
    let mut listed: Vec<FileCustomer> = Vec::with_capacity(document.customers.len());
    for entry in document.customers {
        let id = &entry.id;
        if id.is_empty() {
            bail!("a customer has an empty id");
        }
        let tier = Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == entry.tier)
            .with_context(|| {
                format!(
                    "customer {id}: unknown tier {:?} (free, pro or enterprise)",
                    entry.tier
                )
            })?;
        let hash = entry.api_key_sha256.to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("customer {id}: api_key_sha256 is not 64 hexadecimal characters");
        }
        if entry.seats == Some(0) {
            bail!("customer {id}: seats must be at least 1 (leave it out for no limit)");
        }
        if entry.customer_token.as_deref() == Some("") {
            bail!("customer {id}: customer_token is empty (leave it out, or give the secret)");
        }
        if let Some(other) = listed.iter().find(|l| l.customer.id == *id) {
            bail!("customer {}: listed twice", other.customer.id);
        }
        if let Some(other) = listed.iter().find(|l| l.customer.api_key_sha256 == hash) {
            bail!(
                "customers {} and {id} have the same api_key_sha256",
                other.customer.id
            );
        }
        // The digest of the entry as parsed (not as spelt), so that reformatting the file
        // changes nothing.
        let entry_sha256 = km_durable::digest::sha256_hex(
            serde_json::to_string(&entry)
                .context("serialising an entry")?
                .as_bytes(),
        );
        listed.push(FileCustomer {
            customer: Customer {
                id: entry.id,
                api_key_sha256: hash,
                tier,
                features: entry.features,
                subscription_end: entry.subscription_end,
                customer_token: entry.customer_token,
                seat_limit: entry.seats,
            },
            entry_sha256,
        });
    }
    Ok(listed)
}

impl CustomersFile {
    /// Reads `path` and applies it to `store`; an error when it does not read or validate.
    pub(crate) fn load(path: &Path, store: &Store) -> anyhow::Result<Self> {
        let file = CustomersFile {
            path: path.to_path_buf(),
            applied: Mutex::new(None),
        };
        file.sync_if_changed(store)?;
        Ok(file)
    }

    /// Applies the file to `store` if it changed since it was last applied; `None` when it had
    /// not. Checks run one at a time, so a change is applied once.
    pub(crate) fn sync_if_changed(&self, store: &Store) -> anyhow::Result<Option<SyncReport>> {
        // The lock holds only a stamp, always written whole.
        let mut applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        let before = stamp(&self.path)?;
        if *applied == Some(before) {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        let toml = self.path.extension().is_some_and(|e| e == "toml");
        let listed =
            parse(&text, toml).with_context(|| format!("parsing {}", self.path.display()))?;
        let report = store
            .sync_file_customers(&listed)
            .with_context(|| format!("applying {}", self.path.display()))?;
        // The stamp taken before reading: a write that raced the read is seen on the next check.
        *applied = Some(before);
        eprintln!(
            "km-api-server: applied {} customer(s) from {} ({} added, {} updated, {} unchanged, \
             {} no longer listed)",
            listed.len(),
            self.path.display(),
            report.added,
            report.updated,
            report.unchanged,
            report.deactivated
        );
        for id in &report.rotated_kept {
            eprintln!(
                "km-api-server: customer {id}: {} names an API key rotated away through the API; \
                 keeping the current key (put its SHA-256 in the file)",
                self.path.display()
            );
        }
        Ok(Some(report))
    }
}
