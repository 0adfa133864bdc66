//! Plugin distribution from `--plugins-dir`.
//!
//! - `GET /api/plugins/latest?name=NAME`: `{name, version, sha256, url}` for the package
//!   `--plugins-dir/NAME` (a `.kmpkg`; `sha256` of the package, `url` relative to the API).
//! - `GET /api/plugins/download/{file}`: a file from `--plugins-dir` (plain names only: letters,
//!   digits, `.`, `_`, `-`, not starting with a dot).
//!
//! Packages are read from the directory on every request, so a test can publish a new version
//! by writing a file; they are never stored in the database.

use serde_json::json;

use crate::http::{Request, Response};
use crate::router::{Params, Router};
use crate::state::AppState;

/// The largest package `latest` reads (the loader's own cap on libraries).
const MAX_PACKAGE: u64 = 256 * 1024 * 1024;

pub(super) fn register(router: &mut Router<AppState>) {
    router
        .get("/api/plugins/latest", latest)
        .get("/api/plugins/download/{file}", download);
}

fn download(state: &AppState, _: &Request, params: &Params) -> Response {
    let Some(dir) = &state.plugins_dir else {
        return Response::error(404, "no --plugins-dir");
    };
    let name = params.get("file").unwrap_or_default();
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Response::error(400, "bad file name");
    }
    match std::fs::read(dir.join(name)) {
        Ok(bytes) => Response::bytes(bytes),
        Err(_) => Response::error(404, "no such plugin file"),
    }
}

fn latest(state: &AppState, request: &Request, _: &Params) -> Response {
    let Some(dir) = &state.plugins_dir else {
        return Response::error(404, "no --plugins-dir");
    };
    let name = request.query_param("name").unwrap_or("");
    if km_signing::check_name(name).is_err() {
        return Response::error(400, "bad plugin name");
    }
    let Ok(bytes) = std::fs::read(dir.join(name)) else {
        return Response::error(404, "no such plugin");
    };
    let limits = km_signing::Limits::for_library(MAX_PACKAGE);
    let Ok(package) = km_signing::read_package(&bytes[..], limits) else {
        return Response::error(500, "the stored package does not read");
    };
    Response::json(
        200,
        &json!({
            "name": package.manifest.name,
            "version": package.manifest.version,
            "sha256": km_durable::digest::sha256_hex(&bytes),
            "url": format!("/api/plugins/download/{name}"),
        }),
    )
}
