//! `km seats`: the installations that hold a seat of the subscription (`GET /api/seats`), this
//! one marked, and `km seats release DEVICE` to free one (`DELETE /api/seats/DEVICE`) for
//! another machine. Both authenticate with the configured API key, over the same client (TLS 1.3,
//! pins, rate limits) as every other call km makes.

use std::process::ExitCode;

use abi_stable::std_types::Tuple2;
use anyhow::{bail, Context, Result};
use km_abi::HttpRequest;
use serde_json::Value;

use crate::api::ApiClient;
use crate::cli::{SeatsArgs, SeatsCommand};
use crate::commands::Globals;
use crate::config::{Config, DEFAULT_API_URL};
use crate::exit;

/// How long one call may take.
const TIMEOUT_MS: u32 = 10_000;

/// Runs `km seats`.
pub(crate) fn run(globals: &Globals, args: SeatsArgs) -> Result<ExitCode> {
    let mut config = Config::load(&globals.home)?;
    let Some(api_key) = config.api_key.clone() else {
        bail!(
            "no API key configured: seats belong to a Pro or Enterprise subscription \
             (km init --api-key KEY)"
        );
    };
    config
        .api_url
        .get_or_insert_with(|| DEFAULT_API_URL.to_owned());
    let client = ApiClient::for_config(&globals.runtime, &config)?
        .context("no API endpoint configured (km init --api-url URL)")?;
    let this = crate::device::existing_id(&globals.home)
        .ok()
        .flatten()
        .map(|id| id.to_string());
    match args.command {
        None => list(&client, &api_key, this.as_deref(), args.json),
        Some(SeatsCommand::Release { device }) => release(&client, &api_key, &device, args.json),
    }
}

fn list(client: &ApiClient, api_key: &str, this: Option<&str>, json: bool) -> Result<ExitCode> {
    let answer = call(client, api_key, "GET", "/api/seats")?;
    let mut seats: Value = serde_json::from_slice(&answer).with_context(|| {
        format!(
            "{}: the answer to GET /api/seats is not JSON",
            client.base_url()
        )
    })?;
    if let Some(list) = seats["seats"].as_array_mut() {
        for seat in list {
            let here = this.is_some_and(|id| seat["device_id"] == id);
            seat["this_installation"] = Value::Bool(here);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&seats)?);
        return Ok(ExitCode::from(exit::OK));
    }
    let list = seats["seats"].as_array().cloned().unwrap_or_default();
    let limit = seats["seat_limit"]
        .as_u64()
        .map_or_else(|| "no limit".to_owned(), |n| format!("a limit of {n}"));
    println!(
        "customer {}: {} seat(s) held, {limit}",
        seats["customer_id"].as_str().unwrap_or("?"),
        list.len()
    );
    for seat in &list {
        let when = |key: &str| {
            seat[key]
                .as_i64()
                .and_then(|t| u64::try_from(t).ok())
                .map(|t| {
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(t),
                    )
                    .to_string()
                })
                .unwrap_or_else(|| "?".to_owned())
        };
        println!(
            "  {}{}  first seen {}, last seen {}{}",
            seat["device_id"].as_str().unwrap_or("?"),
            if seat["this_installation"] == true {
                " (this installation)"
            } else {
                ""
            },
            when("first_seen"),
            when("last_seen"),
            seat["last_plugin"]
                .as_str()
                .map(|p| format!(" by {p}"))
                .unwrap_or_default()
        );
    }
    if this.is_some_and(|id| !list.iter().any(|s| s["device_id"] == id)) {
        println!(
            "this installation ({}) holds no seat",
            this.unwrap_or_default()
        );
    }
    Ok(ExitCode::from(exit::OK))
}

fn release(client: &ApiClient, api_key: &str, device: &str, json: bool) -> Result<ExitCode> {
    // A device id is the key id km prints: hex digits, so it is a path segment as it is.
    if device.is_empty() || !device.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{device:?} is not a device id (the hex ids `km seats` lists)");
    }
    let answer = call(client, api_key, "DELETE", &format!("/api/seats/{device}"))?;
    if json {
        println!("{}", String::from_utf8_lossy(&answer).trim_end());
    } else {
        println!(
            "released the seat of {device}: another installation may take it at its next \
             authentication"
        );
    }
    Ok(ExitCode::from(exit::OK))
}

/// A request without a body, authenticated with the customer's API key (`Bearer`), as the
/// account routes (`/api/account`, `/api/seats`) take it.
pub(super) fn with_api_key(
    method: &str,
    path: &str,
    api_key: &str,
    timeout_ms: u32,
) -> HttpRequest {
    HttpRequest {
        method: method.into(),
        path: path.into(),
        headers: vec![Tuple2(
            "authorization".into(),
            format!("Bearer {api_key}").into(),
        )]
        .into(),
        body: Vec::new().into(),
        timeout_ms,
    }
}

/// One call with the API key; the body of a 2xx answer, an error naming the endpoint otherwise.
fn call(client: &ApiClient, api_key: &str, method: &str, path: &str) -> Result<Vec<u8>> {
    use crate::host::ApiTransport as _;
    let request = with_api_key(method, path, api_key, TIMEOUT_MS);
    let url = client.base_url();
    let answer = client
        .request(&request)
        .map_err(|e| anyhow::anyhow!("{url}: {method} {path}: {}", e.message))?;
    let status = answer.status;
    if (200..300).contains(&status) {
        return Ok(answer.body.into_vec());
    }
    let why = super::doctor::error_text(&answer.body, status);
    match status {
        401 | 403 => bail!(
            "{url}: {method} {path}: the API refuses the API key {} ({why}); km init --api-key \
             KEY with a current key",
            crate::config::mask_key(api_key)
        ),
        404 if method == "DELETE" => bail!("{url}: no seat is held by that device ({why})"),
        _ => bail!("{url}: {method} {path} answered {status} ({why})"),
    }
}
