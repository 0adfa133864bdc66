//! Subscription tokens signed by the Kilometers API, and the SDK helper every premium plugin
//! uses to obtain, check, cache and consult them.
//!
//! # Token format
//!
//! ```text
//! km1.<base64url(payload JSON)>.<base64url(Ed25519 signature)>
//! ```
//!
//! The signature covers `"km-subscription-token-v1\n" || <base64url(payload JSON)>`: the exact
//! transmitted text (never a re-serialisation), behind a domain-separation prefix so that no
//! other message the API signs can pass for a token. The payload is
//!
//! ```json
//! {"v":1,"cus":"cust_123","plg":"api-logger","tier":"pro","feat":["api_logging"],
//!  "iat":1700000000,"exp":1700000900,"jti":"…"}
//! ```
//!
//! and [`verify_token`] checks, in this order: size ([`MAX_TOKEN_LEN`]), shape, signature with
//! the API public key the plugin was built with, plugin name, customer, issued-at (60 s of clock
//! skew allowed) and expiry.
//!
//! # The helper
//!
//! [`Subscription`] asks the API (through [`Host::http`]), checks the answer strictly, keeps the
//! last valid claims behind a mutex and answers [`Subscription::current`] cheaply in handlers.
//! Everything that goes wrong degrades quietly: the plugin behaves as on the Free tier, nothing is
//! printed, and [`AuthResponse::reason`] tells `km plugin-status` why.
//!
//! An authentication takes up to two requests:
//!
//! 1. `POST /api/plugins/build-key` `{plugin_name, api_key, build_id, customer_hash}` →
//!    `{build_key}`: the key that opens the build's stamped credentials, wrapped for the API key
//!    the user configured (see [`crate::credentials`]). Asked only when the wrap kept in the
//!    plugin's data directory does not open with the configured key: at the first start, and
//!    after the user rotated the key (`km init --api-key NEW`), which is how an installed build
//!    keeps working through a rotation without being reinstalled.
//! 2. `POST /api/plugins/authenticate` `{plugin_name, plugin_version, required_tier, api_key,
//!    customer_id}` → `{token, ...}`, signed with the build's request key
//!    ([`crate::request`]: timestamp, nonce, signature headers). The customer secret itself is
//!    never sent.
//!
//! A valid token is also cached in the plugin's data directory, and the cache is used only when
//! the API cannot be reached (network error, timeout, 5xx, 429). It is verified exactly like a
//! fresh token (bound to the customer by the customer hash in the build's clear header, so even
//! a build whose key is not at hand can check it), so a restart within its validity needs no
//! network and a hand-edited cache buys nothing. The km ABI stays as it is: the caches live on
//! the plugin's side of the boundary.
//!
//! What is NOT checked: revocation of a token before its expiry (tokens are short-lived for that
//! reason), and the user's clock (a user who sets the clock back can replay an expired token of
//! their own; they cannot mint one).

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use km_abi::abi_stable::std_types::Tuple2;
use ring::signature::{UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::credentials::{self, Credentials, CredentialsError, RegionInfo};
use crate::plugin::Host;
use crate::request::RequestSignature;
use km_abi::{AuthResponse, ErrorKind, HttpRequest, HttpResponse, PluginError, Tier};

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Authentication answers larger than this are refused before any parsing.
pub const MAX_AUTH_RESPONSE_LEN: usize = 64 * 1024;

/// The prefix of every token.
pub const TOKEN_PREFIX: &str = "km1";

/// The domain-separation prefix of the signed message.
pub const TOKEN_SIGNING_CONTEXT: &[u8] = b"km-subscription-token-v1\n";

/// Clock skew tolerated on `iat`.
pub const CLOCK_SKEW_SECS: i64 = 60;

/// The API path plugins authenticate against.
pub const AUTHENTICATE_PATH: &str = "/api/plugins/authenticate";

/// The API path that hands a build its build key, wrapped for the caller's API key.
pub const BUILD_KEY_PATH: &str = "/api/plugins/build-key";

/// The file, in the plugin's data directory, holding the last valid token.
const TOKEN_FILE: &str = "subscription-token";

/// The file, in the plugin's data directory, holding the build key wrapped for the configured
/// API key.
const BUILD_KEY_FILE: &str = "build-key";

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// The customer the subscription belongs to.
    pub customer_id: String,
    /// The plugin the token was issued for.
    pub plugin: String,
    /// The subscription's tier.
    pub tier: Tier,
    /// Feature flags granted.
    pub features: Vec<String>,
    /// Issued at, seconds since the Unix epoch.
    pub issued_at: i64,
    /// Expires at, seconds since the Unix epoch.
    pub expires_at: i64,
    /// The token's id (for the API's logs).
    pub token_id: String,
}

impl TokenClaims {
    /// Whether `feature` was granted.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

/// The payload as signed. Field names are short; unknown fields are refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenPayload {
    /// Format version, 1.
    pub v: u32,
    /// Customer id.
    pub cus: String,
    /// Plugin name.
    pub plg: String,
    /// Tier (`free`, `pro`, `enterprise`).
    #[serde(with = "crate::credentials::tier_serde")]
    pub tier: Tier,
    /// Features.
    pub feat: Vec<String>,
    /// Issued at.
    pub iat: i64,
    /// Expires at.
    pub exp: i64,
    /// Token id.
    pub jti: String,
}

/// Why a token was refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not `km1.<payload>.<signature>`, bad base64, bad JSON, or an unknown version.
    BadFormat(&'static str),
    /// The signature does not verify with the API public key (another key, or altered).
    BadSignature,
    /// The token was issued for another plugin.
    WrongPlugin {
        /// The plugin that checked.
        expected: String,
        /// The plugin the token names.
        actual: String,
    },
    /// The token was issued to another customer.
    WrongCustomer {
        /// The customer of this build.
        expected: String,
        /// The customer the token names.
        actual: String,
    },
    /// The token expired.
    Expired {
        /// When.
        expires_at: i64,
    },
    /// The token was issued in the future (beyond the allowed clock skew).
    NotYetValid {
        /// Its issued-at.
        issued_at: i64,
    },
    /// The token is longer than [`MAX_TOKEN_LEN`].
    Oversized {
        /// Its length.
        len: usize,
    },
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::BadFormat(what) => write!(f, "malformed token: {what}"),
            TokenError::BadSignature => f.write_str("token signature is not the API's"),
            TokenError::WrongPlugin { expected, actual } => {
                write!(f, "token is for plugin {actual:?}, not {expected:?}")
            }
            TokenError::WrongCustomer { expected, actual } => {
                write!(f, "token is for customer {actual:?}, not {expected:?}")
            }
            TokenError::Expired { expires_at } => write!(f, "token expired at {expires_at}"),
            TokenError::NotYetValid { issued_at } => {
                write!(
                    f,
                    "token is issued in the future ({issued_at}); check the clock"
                )
            }
            TokenError::Oversized { len } => {
                write!(f, "token is {len} bytes (limit {MAX_TOKEN_LEN})")
            }
        }
    }
}

impl std::error::Error for TokenError {}

/// The message the API signs for a payload already encoded in base64url.
pub fn signing_message(payload_b64: &str) -> Vec<u8> {
    let mut msg = Vec::with_capacity(TOKEN_SIGNING_CONTEXT.len() + payload_b64.len());
    msg.extend_from_slice(TOKEN_SIGNING_CONTEXT);
    msg.extend_from_slice(payload_b64.as_bytes());
    msg
}

/// Encodes a token from a payload and a signing function (the API side; the reference server
/// and tests use it with an `Ed25519KeyPair`).
pub fn encode_token(payload: &TokenPayload, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    // Serialising a struct of strings and integers cannot fail.
    let json = serde_json::to_vec(payload).unwrap_or_default();
    let payload_b64 = URL_SAFE_NO_PAD.encode(json);
    let signature = sign(&signing_message(&payload_b64));
    format!(
        "{TOKEN_PREFIX}.{payload_b64}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// Verifies a subscription token: signature by `api_public_key` (32-byte Ed25519), bound to
/// `expect_plugin` and (when given) `expect_customer`, valid at `now_unix`.
pub fn verify_token(
    token: &str,
    api_public_key: &[u8],
    expect_plugin: &str,
    expect_customer: Option<&str>,
    now_unix: i64,
) -> Result<TokenClaims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Oversized { len: token.len() });
    }
    let mut parts = token.split('.');
    let (Some(prefix), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::BadFormat("expected three dot-separated parts"));
    };
    if prefix != TOKEN_PREFIX {
        return Err(TokenError::BadFormat("unknown token version"));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| TokenError::BadFormat("signature is not base64url"))?;
    // The signature is checked before the payload is parsed: nothing unauthenticated is
    // interpreted beyond its length.
    UnparsedPublicKey::new(&ED25519, api_public_key)
        .verify(&signing_message(payload_b64), &signature)
        .map_err(|_| TokenError::BadSignature)?;
    let json = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| TokenError::BadFormat("payload is not base64url"))?;
    let payload: TokenPayload = serde_json::from_slice(&json)
        .map_err(|_| TokenError::BadFormat("payload is not the expected JSON"))?;
    if payload.v != 1 {
        return Err(TokenError::BadFormat("unknown payload version"));
    }
    if payload.plg != expect_plugin {
        return Err(TokenError::WrongPlugin {
            expected: expect_plugin.to_owned(),
            actual: payload.plg,
        });
    }
    if let Some(customer) = expect_customer {
        if payload.cus != customer {
            return Err(TokenError::WrongCustomer {
                expected: customer.to_owned(),
                actual: payload.cus,
            });
        }
    }
    if payload.iat > now_unix.saturating_add(CLOCK_SKEW_SECS) {
        return Err(TokenError::NotYetValid {
            issued_at: payload.iat,
        });
    }
    if payload.exp <= now_unix || payload.exp <= payload.iat {
        return Err(TokenError::Expired {
            expires_at: payload.exp,
        });
    }
    Ok(TokenClaims {
        customer_id: payload.cus,
        plugin: payload.plg,
        tier: payload.tier,
        features: payload.feat,
        issued_at: payload.iat,
        expires_at: payload.exp,
        token_id: payload.jti,
    })
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The body of `POST /api/plugins/authenticate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthRequestBody {
    /// The plugin's name.
    pub plugin_name: String,
    /// The plugin's version.
    pub plugin_version: String,
    /// The tier the plugin needs.
    pub required_tier: String,
    /// The user's API key.
    pub api_key: String,
    /// The customer id stamped into this build, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// The customer token, as builds of credentials format 1 sent it in clear. Builds of
    /// format 2 never send it (they sign with a key derived from it); the API refuses unsigned
    /// requests, so this field is read only to explain that refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_token: Option<String>,
}

/// The body of `POST /api/plugins/build-key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildKeyRequestBody {
    /// The plugin's name (for the API's logs).
    pub plugin_name: String,
    /// The user's API key: the build key comes back wrapped for it.
    pub api_key: String,
    /// The build id from the build's clear header, hex.
    pub build_id: String,
    /// The customer hash from the build's clear header, hex.
    pub customer_hash: String,
}

/// The answer of `POST /api/plugins/build-key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildKeyAnswerBody {
    /// The build key wrapped for the request's API key
    /// ([`crate::credentials::wrap_build_key`]).
    pub build_key: String,
}

/// The body of a successful answer. `tier`, `features` and `expires_at` repeat what the token
/// signs, for readers; the plugin insists they agree with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthAnswerBody {
    /// The signed token.
    pub token: String,
    /// The customer.
    pub customer_id: String,
    /// The tier.
    pub tier: String,
    /// The features.
    pub features: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: i64,
}

/// The outcome of the last authentication, as handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionState {
    /// Not authenticated yet in this process.
    Pending,
    /// A valid token grants the required tier.
    Active(TokenClaims),
    /// Degraded: no valid token for the required tier.
    Degraded,
}

struct Inner {
    /// The last valid claims that satisfy the required tier, with their token.
    active: Option<(TokenClaims, String)>,
    /// Whether any authentication has completed.
    decided: bool,
}

/// The SDK helper of premium plugins: authenticates with the API through the host, checks the
/// token, keeps it, and tells handlers whether full features are on.
pub struct Subscription {
    plugin: &'static str,
    version: &'static str,
    required: Tier,
    region: &'static [u8],
    cache_dir: Mutex<Option<PathBuf>>,
    inner: Mutex<Inner>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("plugin", &self.plugin)
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

/// Why the API could not be asked; decides whether a cached token may stand in.
enum Failure {
    /// The API could not be reached or is overloaded: a valid cached token stands in.
    Unavailable(String),
    /// The API said no, or answered something unacceptable: degrade.
    Refused(String),
}

impl Subscription {
    /// A helper for `plugin` at `version` needing `required`, with the plugin's credentials
    /// region (from [`credentials_region!`](crate::credentials_region)).
    pub fn new(
        plugin: &'static str,
        version: &'static str,
        required: Tier,
        region: &'static [u8],
    ) -> Self {
        Subscription {
            plugin,
            version,
            required,
            region,
            cache_dir: Mutex::new(None),
            inner: Mutex::new(Inner {
                active: None,
                decided: false,
            }),
        }
    }

    /// Keeps the last valid token in `dir` (the plugin's data directory), for restarts without
    /// network, and the build key wrapped for the configured API key, so that only the first
    /// start and the first start after a key rotation ask the API for it.
    pub fn cache_in(&self, dir: PathBuf) {
        if let Ok(mut slot) = self.cache_dir.lock() {
            *slot = Some(dir);
        }
    }

    /// The claims of a valid token granting the required tier, if any, at `now` (seconds since
    /// the epoch). Cheap: meant for every message.
    pub fn current(&self, now: i64) -> Option<TokenClaims> {
        let inner = self.inner.lock().ok()?;
        match &inner.active {
            Some((claims, _)) if claims.expires_at > now => Some(claims.clone()),
            _ => None,
        }
    }

    /// The token behind [`Self::current`], for calls to the API that must show it
    /// (`authorization: Bearer …`).
    pub fn current_token(&self, now: i64) -> Option<String> {
        let inner = self.inner.lock().ok()?;
        match &inner.active {
            Some((claims, token)) if claims.expires_at > now => Some(token.clone()),
            _ => None,
        }
    }

    /// Whether a valid token granting the required tier includes `feature` at `now`.
    pub fn has_feature(&self, feature: &str, now: i64) -> bool {
        let Ok(inner) = self.inner.lock() else {
            return false;
        };
        matches!(&inner.active, Some((c, _)) if c.expires_at > now && c.has_feature(feature))
    }

    /// Whether [`Self::state`] is `Active` at `now`, without copying the claims: for the check
    /// a plugin makes on every message (a copy of the claims is several allocations).
    pub fn is_active(&self, now: i64) -> bool {
        let Ok(inner) = self.inner.lock() else {
            return false;
        };
        matches!(&inner.active, Some((c, _)) if c.expires_at > now)
    }

    /// Pending (never authenticated), active or degraded, at `now`.
    pub fn state(&self, now: i64) -> SubscriptionState {
        let Ok(inner) = self.inner.lock() else {
            return SubscriptionState::Degraded;
        };
        match &inner.active {
            Some((claims, _)) if claims.expires_at > now => {
                SubscriptionState::Active(claims.clone())
            }
            _ if !inner.decided => SubscriptionState::Pending,
            _ => SubscriptionState::Degraded,
        }
    }

    /// Authenticates with the API through `host` using the user's `api_key`. Never fails: a
    /// problem yields a degraded answer whose `reason` says why.
    pub fn authenticate(&self, host: &Host, api_key: &str) -> AuthResponse {
        self.authenticate_at(|req| host.http(req), api_key, now_unix())
    }

    /// [`Self::authenticate`] with the HTTP call and the clock passed in (for tests).
    fn authenticate_at(
        &self,
        http: impl FnMut(HttpRequest) -> Result<HttpResponse, PluginError>,
        api_key: &str,
        now: i64,
    ) -> AuthResponse {
        let response = self.decide(http, api_key, now);
        if let Ok(mut inner) = self.inner.lock() {
            inner.decided = true;
        }
        response
    }

    fn decide(
        &self,
        mut http: impl FnMut(HttpRequest) -> Result<HttpResponse, PluginError>,
        api_key: &str,
        now: i64,
    ) -> AuthResponse {
        let info = match credentials::region_info(self.region) {
            Ok(info) => info,
            Err(CredentialsError::NotStamped) => {
                return self.degrade(format!(
                "this build of {} carries no Kilometers API key: it was not built for a customer \
                     (km-sign build-plugin)",
                self.plugin
            ))
            }
            Err(e @ CredentialsError::LegacyFormat) => return self.degrade(e.to_string()),
            Err(e) => return self.degrade(format!("credentials region: {e}")),
        };
        if api_key.is_empty() {
            return self.degrade("no Kilometers API key is configured (run `km init`)".to_owned());
        }
        let asked = self
            .open_credentials(&mut http, api_key, &info)
            .and_then(|creds| self.ask_api(&mut http, api_key, &creds, &info, now));
        match asked {
            Ok((claims, token)) => self.accept(claims, token),
            Err(Failure::Refused(reason)) => {
                self.forget(TOKEN_FILE);
                self.degrade(reason)
            }
            Err(Failure::Unavailable(why)) => {
                // Keep what we have while it is valid: first the token in memory, then the cache.
                let kept = self
                    .inner
                    .lock()
                    .ok()
                    .and_then(|i| i.active.clone())
                    .map(|(_, token)| token)
                    .or_else(|| self.read(TOKEN_FILE, MAX_TOKEN_LEN));
                let revalidated = kept.and_then(|token| {
                    self.check_token(&token, &info, now)
                        .ok()
                        .map(|claims| (claims, token))
                });
                match revalidated {
                    Some((claims, token)) if claims.tier.satisfies(self.required) => {
                        let mut response = self.accept(claims, token);
                        response.reason =
                            format!("API unreachable ({why}); using the cached token").into();
                        response
                    }
                    _ => self.degrade(format!("Kilometers API unreachable: {why}")),
                }
            }
        }
    }

    /// A token's checks: the API's signature, this plugin, and the customer of this build (by the
    /// customer hash of the build's clear header, which the credentials are checked against when
    /// they are opened).
    fn check_token(
        &self,
        token: &str,
        info: &RegionInfo,
        now: i64,
    ) -> Result<TokenClaims, TokenError> {
        let claims = verify_token(token, &info.api_public_key, self.plugin, None, now)?;
        if credentials::customer_hash(&claims.customer_id) != info.customer_hash_hex() {
            return Err(TokenError::WrongCustomer {
                expected: format!(
                    "the customer of this build ({})",
                    &info.customer_hash_hex()[..16]
                ),
                actual: claims.customer_id,
            });
        }
        Ok(claims)
    }

    /// The build's credentials, opened with the build key: the wrap kept in the data directory
    /// when it opens with `api_key`, otherwise a wrap the API hands out for `api_key` (kept for
    /// next time once it proved to open the credentials).
    fn open_credentials(
        &self,
        http: &mut impl FnMut(HttpRequest) -> Result<HttpResponse, PluginError>,
        api_key: &str,
        info: &RegionInfo,
    ) -> Result<Credentials, Failure> {
        let kept = self
            .read(BUILD_KEY_FILE, 1024)
            .and_then(|wrapped| credentials::unwrap_build_key(&wrapped, api_key, info).ok())
            .and_then(|key| credentials::open(self.region, &key).ok());
        if let Some(creds) = kept {
            return Ok(creds);
        }
        let body = BuildKeyRequestBody {
            plugin_name: self.plugin.to_owned(),
            api_key: api_key.to_owned(),
            build_id: info.build_id_hex(),
            customer_hash: info.customer_hash_hex(),
        };
        let body = serde_json::to_vec(&body).map_err(|e| Failure::Refused(e.to_string()))?;
        let answer = send(http, HttpRequest::post_json(BUILD_KEY_PATH, body))?;
        let answer: BuildKeyAnswerBody = serde_json::from_slice(&answer).map_err(|_| {
            Failure::Refused("the API's answer to the build key request is malformed".to_owned())
        })?;
        let key = credentials::unwrap_build_key(&answer.build_key, api_key, info)
            .map_err(|e| Failure::Refused(format!("the API's build key: {e}")))?;
        let creds =
            credentials::open(self.region, &key).map_err(|e| Failure::Refused(e.to_string()))?;
        self.write(BUILD_KEY_FILE, &answer.build_key);
        Ok(creds)
    }

    fn ask_api(
        &self,
        http: &mut impl FnMut(HttpRequest) -> Result<HttpResponse, PluginError>,
        api_key: &str,
        creds: &Credentials,
        info: &RegionInfo,
        now: i64,
    ) -> Result<(TokenClaims, String), Failure> {
        let body = AuthRequestBody {
            plugin_name: self.plugin.to_owned(),
            plugin_version: self.version.to_owned(),
            required_tier: self.required.as_str().to_owned(),
            api_key: api_key.to_owned(),
            customer_id: Some(creds.customer_id.clone()),
            customer_token: None,
        };
        let body = serde_json::to_vec(&body).map_err(|e| Failure::Refused(e.to_string()))?;
        let key = credentials::request_key(&creds.customer_token, &info.build_id);
        let signature =
            RequestSignature::sign(&key, "POST", AUTHENTICATE_PATH, &body, &info.build_id, now)
                .map_err(|e| Failure::Refused(e.to_string()))?;
        let mut request = HttpRequest::post_json(AUTHENTICATE_PATH, body);
        for (name, value) in signature.headers() {
            request.headers.push(Tuple2(name.into(), value.into()));
        }
        let body = send(http, request)?;
        let answer: AuthAnswerBody = serde_json::from_slice(&body)
            .map_err(|_| Failure::Refused("the API's answer is malformed".to_owned()))?;
        let claims = self
            .check_token(&answer.token, info, now)
            .map_err(|e| Failure::Refused(format!("rejected the API's token: {e}")))?;
        // The readable fields must say what the signed token says: a tier or feature list
        // altered in transit is a forgery, not a detail.
        if answer.tier != claims.tier.as_str()
            || answer.features != claims.features
            || answer.expires_at != claims.expires_at
            || answer.customer_id != claims.customer_id
        {
            return Err(Failure::Refused(
                "the API's answer disagrees with its signed token (altered in transit?)".to_owned(),
            ));
        }
        Ok((claims, answer.token))
    }

    fn accept(&self, claims: TokenClaims, token: String) -> AuthResponse {
        if !claims.tier.satisfies(self.required) {
            let reason = format!(
                "the subscription of {} is {}; {} needs {}",
                claims.customer_id, claims.tier, self.plugin, self.required
            );
            self.forget(TOKEN_FILE);
            let mut response = self.degrade(reason);
            response.tier = claims.tier;
            response.features = claims.features.iter().map(|f| f.as_str().into()).collect();
            response.expires_at = claims.expires_at;
            response.token = token.into();
            return response;
        }
        self.write(TOKEN_FILE, &token);
        let response = AuthResponse {
            authorized: true,
            tier: claims.tier,
            features: claims.features.iter().map(|f| f.as_str().into()).collect(),
            expires_at: claims.expires_at,
            token: token.as_str().into(),
            reason: "".into(),
        };
        if let Ok(mut inner) = self.inner.lock() {
            inner.active = Some((claims, token));
        }
        response
    }

    fn degrade(&self, reason: String) -> AuthResponse {
        if let Ok(mut inner) = self.inner.lock() {
            inner.active = None;
        }
        AuthResponse::degraded(reason)
    }

    fn cache_path(&self, file: &str) -> Option<PathBuf> {
        self.cache_dir
            .lock()
            .ok()
            .and_then(|dir| dir.as_ref().map(|d| d.join(file)))
    }

    /// A cache file's text, when it is there and at most `limit` bytes.
    fn read(&self, file: &str, limit: usize) -> Option<String> {
        let path = self.cache_path(file)?;
        let text = std::fs::read_to_string(path).ok()?;
        (text.len() <= limit).then(|| text.trim().to_owned())
    }

    fn write(&self, file: &str, text: &str) {
        let Some(path) = self.cache_path(file) else {
            return;
        };
        // Atomically and private to the user, so that a crash never leaves half a token. A
        // failure only costs a fresh request at the next start: nothing to report.
        let _ = km_durable::write_atomic(&path, text.as_bytes(), km_durable::PRIVATE);
    }

    fn forget(&self, file: &str) {
        if let Some(path) = self.cache_path(file) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Sends `request` and returns the body of a 200 answer. Only "could not reach it" (network
/// errors, timeouts, 5xx, 429) is [`Failure::Unavailable`], which lets a cached token stand in;
/// anything else (no API configured, a refused path, an oversized answer, a refusal) is a
/// refusal, explained with the API's own `{"error": ...}` when it gave one.
fn send(
    http: &mut impl FnMut(HttpRequest) -> Result<HttpResponse, PluginError>,
    request: HttpRequest,
) -> Result<Vec<u8>, Failure> {
    let response = match http(request) {
        Ok(r) => r,
        Err(e) if e.kind == ErrorKind::NETWORK || e.kind == ErrorKind::TIMEOUT => {
            return Err(Failure::Unavailable(e.message.into_string()))
        }
        Err(e) => return Err(Failure::Refused(e.message.into_string())),
    };
    if response.status >= 500 || response.status == 429 {
        return Err(Failure::Unavailable(format!("HTTP {}", response.status)));
    }
    if response.body.len() > MAX_AUTH_RESPONSE_LEN {
        return Err(Failure::Refused(format!(
            "the API's answer is oversized ({} bytes)",
            response.body.len()
        )));
    }
    if response.status != 200 {
        let why = serde_json::from_slice::<serde_json::Value>(&response.body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| "no reason given".to_owned());
        let why: String = why.chars().take(300).collect();
        return Err(Failure::Refused(format!(
            "the API refused (HTTP {}): {why}",
            response.status
        )));
    }
    Ok(response.body.into_vec())
}

#[cfg(test)]
mod tests;
