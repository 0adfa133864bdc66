//! The demo's team, for team-collaboration: a team `demo-team` on the reference API whose only
//! member is the demo customer (as `you`, its admin), with an admin key made for the demo and a
//! team policy signed with it (version 1: destructive `delete_*` tools are blocked). The API
//! reads the team and the signed policy from its teams directory (`--teams-dir`), and
//! `km plugin team-collaboration join` pins the admin key and fetches the policy, as a member
//! does.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{output_of, run_tool, Tools};

/// The team's name.
pub(super) const TEAM: &str = "demo-team";
/// The demo customer's member id in it.
pub(super) const MEMBER: &str = "you";
/// The policy's version.
pub(super) const VERSION: u64 = 1;

/// The team's files.
pub(super) struct Team {
    /// The API's `--teams-dir`.
    pub(super) teams_dir: PathBuf,
    /// The admin key's prefix (`.key`, `.pub`).
    admin_key: PathBuf,
}

impl Team {
    /// Makes the admin key, the team's `team.toml` and its signed policy, under `dir`.
    pub(super) fn create(tools: &Tools, dir: &Path, customer_id: &str) -> Result<Team> {
        let admin_key = dir.join("team-admin");
        run_tool(
            tools
                .command(&tools.km_sign)
                .args(["keygen", "--out"])
                .arg(&admin_key),
            "km-sign keygen (the team's admin key)",
        )?;
        let pem = std::fs::read_to_string(admin_key.with_extension("pub"))
            .with_context(|| format!("reading {}", admin_key.with_extension("pub").display()))?;
        let teams_dir = dir.join("teams");
        let team_dir = teams_dir.join(TEAM);
        crate::home::KmHome::ensure_private_dir(&team_dir)?;
        let team = format!(
            "[[admin_keys]]\nlabel = \"{TEAM} admin\"\npublic_key = \"\"\"\n{pem}\"\"\"\n\n\
             [[members]]\nid = \"{MEMBER}\"\ncustomer = \"{customer_id}\"\nrole = \"admin\"\n"
        );
        let team_file = team_dir.join("team.toml");
        km_durable::write_atomic(&team_file, team.as_bytes(), km_durable::PRIVATE)
            .with_context(|| format!("writing {}", team_file.display()))?;
        let policy = dir.join("team-policy.toml");
        km_durable::write_atomic(
            &policy,
            b"[team-collaboration]\nblocked_tools = [\"delete_*\"]\n",
            km_durable::PRIVATE,
        )
        .with_context(|| format!("writing {}", policy.display()))?;
        run_tool(
            tools
                .command(&tools.km_sign)
                .arg("team-policy")
                .arg("--key")
                .arg(admin_key.with_extension("key"))
                .args(["--team", TEAM, "--version", &VERSION.to_string()])
                .args(["--issued-by", "km demo"])
                .arg("--out-dir")
                .arg(&team_dir)
                .arg(&policy),
            "km-sign team-policy",
        )?;
        Ok(Team {
            teams_dir,
            admin_key,
        })
    }

    /// `km plugin team-collaboration join`: what it said.
    pub(super) fn join(&self, tools: &Tools, home: &Path) -> Result<String> {
        let out = output_of(
            tools
                .km(home)
                .args(["plugin", "team-collaboration", "join", TEAM, "--admin-key"])
                .arg(self.admin_key.with_extension("pub")),
            "km plugin team-collaboration join",
        )?;
        let text = String::from_utf8_lossy(&out);
        Ok(text.lines().next().unwrap_or_default().trim().to_owned())
    }
}
