//! `km-sign team-policy`: a team's policy, signed by its admin key, one bundle per plugin it
//! governs.
//!
//! The input is one TOML file with a section per policy: each plugin's (`[tool-guard]`,
//! `[advanced-filters]`, `[team-collaboration]`, in the schema of that plugin's policy file plus
//! what it documents for team files) and the team's roster (`[roster]`, the members whose own
//! keys may sign shared approvals; see `km_policy::team::roster`):
//!
//! ```toml
//! [team-collaboration]
//! blocked_tools = ["delete_repository"]
//!
//! [tool-guard.defaults]
//! new = "block"
//!
//! [[roster.members]]
//! id = "alice"
//! roles = ["approver"]
//! public_key = "-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----\n"
//! ```
//!
//! Each section becomes `OUT/NAME.toml`: a DSSE envelope whose payload is the `bundle` header
//! (team, policy, version, issued_at, issued_by) and the section's TOML, made by km-policy's
//! sealing (the format every plugin verifies; see `plugins/shared/policy/README.md`).
//! team-collaboration's bundle is always written, empty when the input has no section for it,
//! so that a version without team blocks lifts those of an older one. Every other plugin keeps
//! the last bundle it received until a newer one names it: to lift all of a plugin's team
//! rules, keep its section, empty.
//!
//! Checked here: the key (Ed25519: team policies accept no other), the team name, the version
//! (1 or more), each section's name and shape, and the roster (ids, roles, keys). A plugin's
//! settings are not: km-sign does not know every plugin's schema; each plugin refuses a bundle
//! with a setting it does not know, keeps its previous one, and says so.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use clap::Args;
use km_policy::team::{payload, seal, signing_input, BundleHeader, RosterFile, ROSTER};
use km_signing::{format_timestamp, Algorithm};

/// team-collaboration's policy name: its bundle is always written.
const TEAM_COLLABORATION: &str = "team-collaboration";

/// `km-sign team-policy` arguments.
#[derive(Debug, Args)]
pub(crate) struct TeamPolicyArgs {
    /// The team's admin key (Ed25519 private key PEM, as `km-sign keygen` writes it).
    #[arg(long, value_name = "ADMIN.key")]
    pub(crate) key: PathBuf,
    /// The team's name (as members join it: 1 to 64 of A-Z a-z 0-9 . _ -).
    #[arg(long, value_name = "TEAM")]
    pub(crate) team: String,
    /// The policy's version: higher than every version published before.
    #[arg(long, value_name = "N")]
    pub(crate) version: u64,
    /// Who issues it, for people (recorded in each bundle, not checked).
    #[arg(long, value_name = "WHO")]
    pub(crate) issued_by: Option<String>,
    /// Where the signed files go [default: TEAM-vN in the current directory].
    #[arg(long, value_name = "DIR")]
    pub(crate) out_dir: Option<PathBuf>,
    /// The policy: one TOML file with a section per plugin it governs, and `[roster]`.
    pub(crate) policy: PathBuf,
}

/// Signs the bundles of `args.policy` into the output directory.
pub(crate) fn team_policy(args: &TeamPolicyArgs) -> Result<()> {
    let key = crate::commands::read_private_key(&args.key)?;
    if key.algorithm() != Algorithm::Ed25519 {
        bail!(
            "{} is an {} key: team policies are signed with Ed25519 keys (km-sign keygen --alg ed25519)",
            args.key.display(),
            key.algorithm()
        );
    }
    if args.version == 0 {
        bail!("--version must be 1 or more");
    }
    let public = key.public_key();
    let text = std::fs::read_to_string(&args.policy)
        .with_context(|| format!("reading {}", args.policy.display()))?;
    let sections = sections(&args.policy, &text)?;
    let issued_at = format_timestamp(SystemTime::now());
    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}-v{}", args.team, args.version)));
    let mut bundles = Vec::with_capacity(sections.len());
    for (name, body) in &sections {
        let header = BundleHeader {
            team: args.team.clone(),
            policy: name.clone(),
            version: args.version,
            issued_at: Some(issued_at.clone()),
            issued_by: args.issued_by.clone(),
        };
        let payload = payload(&header, body)
            .with_context(|| format!("{}: section [{name}]", args.policy.display()))?;
        let signature = key.sign(&signing_input(payload.as_bytes()))?;
        let envelope = seal(
            payload.as_bytes(),
            &[(public.key_id().as_str(), signature.as_slice())],
        )?;
        bundles.push((out_dir.join(format!("{name}.toml")), envelope));
    }
    let input = std::fs::canonicalize(&args.policy).ok();
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    for (path, _) in &bundles {
        if input.is_some() && std::fs::canonicalize(path).ok() == input {
            bail!(
                "{} would overwrite the input: choose another --out-dir",
                path.display()
            );
        }
    }
    for (path, envelope) in &bundles {
        km_durable::write_atomic(path, envelope.as_bytes(), km_durable::PUBLIC)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "km-sign: wrote {} (team {}, {} v{}, admin key {})",
            path.display(),
            args.team,
            path.file_stem()
                .map(|s| s.to_string_lossy())
                .unwrap_or_default(),
            args.version,
            public.key_id()
        );
    }
    Ok(())
}

/// The input's sections, each as TOML text, with team-collaboration's (empty) when it has none.
fn sections(path: &Path, text: &str) -> Result<Vec<(String, String)>> {
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    if table.is_empty() {
        bail!(
            "{} has no section: write one per plugin it governs ([tool-guard], [team-collaboration], ...)",
            path.display()
        );
    }
    let mut sections = Vec::with_capacity(table.len() + 1);
    for (name, value) in &table {
        let toml::Value::Table(section) = value else {
            bail!(
                "{}: `{name}` is not a section; each top-level entry is [POLICY] for the plugin it governs",
                path.display()
            );
        };
        if name == ROSTER {
            let roster: RosterFile = toml::Value::Table(section.clone())
                .try_into()
                .with_context(|| format!("{}: [roster]", path.display()))?;
            roster
                .check()
                .map_err(|e| anyhow::anyhow!("{}: [roster]: {e}", path.display()))?;
        }
        let body = toml::to_string(section)
            .with_context(|| format!("{}: section [{name}]", path.display()))?;
        sections.push((name.clone(), body));
    }
    if !table.contains_key(TEAM_COLLABORATION) {
        sections.push((TEAM_COLLABORATION.to_owned(), String::new()));
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_section_is_a_policy_and_team_collaboration_is_always_there() {
        let text = "[tool-guard.defaults]\nnew = \"block\"\n\n[advanced-filters]\n";
        let sections = sections(Path::new("p.toml"), text).expect("valid");
        let names: Vec<&str> = sections.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["advanced-filters", "tool-guard", "team-collaboration"]
        );
        assert!(
            sections[1].1.contains("new = \"block\""),
            "{:?}",
            sections[1]
        );
    }

    #[test]
    fn a_value_at_the_top_or_a_bad_roster_is_named() {
        let err = sections(Path::new("p.toml"), "blocked = 1\n").expect_err("not a section");
        assert!(
            format!("{err:#}").contains("`blocked` is not a section"),
            "{err:#}"
        );
        let err = sections(
            Path::new("p.toml"),
            "[[roster.members]]\nid = \"a\"\npublic_key = \"nope\"\n",
        )
        .expect_err("bad key");
        assert!(format!("{err:#}").contains("[roster]: member a"), "{err:#}");
        assert!(sections(Path::new("p.toml"), "").is_err());
        assert!(sections(Path::new("p.toml"), "[x\n").is_err());
    }
}
