//! Who may drive the control API, and from where.
//!
//! The API listens on 127.0.0.1 only, so only this machine reaches it; but a web page
//! that the person at this machine opens runs on this machine too. Three checks keep other
//! web pages out (the model of Syncthing's GUI: an API key plus host checks), applied to
//! every request before any route:
//!
//! 1. **Host.** A request whose `Host` names anything but a loopback name or address
//!    (`localhost`, `127.0.0.1`, `[::1]`) is refused with 403. That is what defeats DNS
//!    rebinding: a foreign page whose name was made to resolve to 127.0.0.1 still sends
//!    its own name as `Host`. A request without `Host` (not something a browser sends)
//!    passes.
//! 2. **Origin.** A browser names the page behind every cross-origin request and every
//!    write in `Origin`; one that is not this API's own origin (same scheme, host and port
//!    as `Host`) is refused with 403, and so is any `Sec-Fetch-Site` but `same-origin` and
//!    `none` (a person typing the address). The API sends no CORS headers, so no foreign
//!    page can read an answer either; a preflight (`OPTIONS`) is refused like the request
//!    it announces.
//! 3. **Token.** Every request that changes state (any method but GET and HEAD), and every
//!    read of something private to this node ([`PRIVATE_READS`]: the messages it received,
//!    decrypted), must carry `Authorization: Bearer <token>`, the per-node secret in
//!    `<data_dir>/api-token` (32 random bytes in hex, mode 0600, made at first start and
//!    kept, so a bookmarked dashboard keeps working across restarts). Without it: 401. Other
//!    reads need no token: the checks above keep foreign pages from them, and what they show
//!    (telemetry, peers, clusters, the replicated store, events) every mesh member may see
//!    anyway.
//!
//! Every answer also says `X-Content-Type-Options: nosniff`, and every answer that sets no
//! policy of its own gets `Content-Security-Policy: default-src 'none'; sandbox`, so no
//! answer can ever run as a page in this origin (where the dashboard keeps its token).
//!
//! The CLI reads the token from the data dir (or `--api-token` / `FOGMESH_API_TOKEN` with
//! `--api`); the dashboard gets it in the fragment of the URL `fogmesh dashboard` prints,
//! which browsers never send to a server.

use std::path::{Path, PathBuf};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::runtime::capability::ReasonLabel;

/// The one write that needs no token: trading a one-time sign-in code for it
/// ([`super::signin`]); the host and origin checks still apply.
const TOKEN_FREE_WRITES: &[&str] = &[super::signin::SIGNIN_PATH];

/// Reads that need the token too: what this node alone may see.
pub const PRIVATE_READS: &[&str] = &["/v1/messages"];

/// The token file in the data dir.
pub const TOKEN_FILE: &str = "api-token";
/// Random bytes in a token (hex doubles them).
const TOKEN_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the control API token {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("the control API token {path} is damaged ({reason}); delete it and restart the node to make a new one")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot create the control API token {path}: {reason}")]
    Create { path: PathBuf, reason: String },
}

/// The per-node secret that write requests carry.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

impl ApiToken {
    /// A fresh random token.
    pub fn generate() -> Self {
        let bytes: [u8; TOKEN_BYTES] = rand::random();
        Self(hex::encode(bytes))
    }

    /// A token as text (hex); refuses anything else, so a damaged file is noticed.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let valid = text.len() == 2 * TOKEN_BYTES && text.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| Self(text.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `headers` carry this token (`Authorization: Bearer <token>`).
    pub fn is_presented_in(&self, headers: &HeaderMap) -> bool {
        presented_token(headers).is_some_and(|presented| self.matches(presented))
    }

    /// Compares in time independent of where the first difference is, so answers do not
    /// leak how much of a guess was right.
    fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

/// The data dir's token, made (mode 0600) if there is none.
pub fn load_or_create(data_dir: &Path) -> Result<ApiToken, TokenError> {
    if let Some(token) = read(data_dir)? {
        return Ok(token);
    }
    let path = token_path(data_dir);
    let token = ApiToken::generate();
    crate::identity::write_secret(&path, token.as_str().as_bytes()).map_err(|e| {
        TokenError::Create {
            path: path.clone(),
            reason: e.to_string(),
        }
    })?;
    Ok(token)
}

/// The data dir's token, if it has one.
pub fn read(data_dir: &Path) -> Result<Option<ApiToken>, TokenError> {
    let path = token_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => ApiToken::parse(&text)
            .map(Some)
            .ok_or_else(|| TokenError::Corrupt {
                path,
                reason: format!("expected {} hex digits", 2 * TOKEN_BYTES),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TokenError::Unreadable {
            path,
            reason: e.to_string(),
        }),
    }
}

/// Requests the checks refused, by reason (`fogmesh_control_refused_total{reason}`).
pub type RefusedRequests = Family<ReasonLabel, Counter>;

/// What the access check needs: the token and where to count refusals.
#[derive(Debug, Clone)]
pub struct Access {
    pub token: ApiToken,
    pub refused: RefusedRequests,
}

impl Access {
    /// Registers the refusal counter in the node's registry.
    pub fn new(token: ApiToken, registry: &mut prometheus_client::registry::Registry) -> Self {
        let refused = RefusedRequests::default();
        registry.register(
            "control_refused",
            "Control API requests refused by the host, origin and token checks, by reason",
            refused.clone(),
        );
        Self { token, refused }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    ForeignHost,
    ForeignOrigin,
    MissingToken,
    WrongToken,
}

impl Refusal {
    fn status(self) -> StatusCode {
        match self {
            Refusal::ForeignHost | Refusal::ForeignOrigin => StatusCode::FORBIDDEN,
            Refusal::MissingToken | Refusal::WrongToken => StatusCode::UNAUTHORIZED,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Refusal::ForeignHost => {
                "the Host header names no loopback address: the control API answers only \
                 requests addressed to 127.0.0.1, [::1] or localhost"
            }
            Refusal::ForeignOrigin => {
                "requests from other web origins are refused: open the page the node serves \
                 (fogmesh dashboard prints its address)"
            }
            Refusal::MissingToken => {
                "this request changes the node and needs its token: \
                 `Authorization: Bearer <token>`, the token being in <data_dir>/api-token \
                 (the CLI reads it from there; `fogmesh dashboard` prints a link carrying it)"
            }
            Refusal::WrongToken => "the token is not this node's (see <data_dir>/api-token)",
        }
    }
}

/// The checks of the module docs, on a request's method, path and headers.
pub fn check(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    token: &ApiToken,
) -> Result<(), Refusal> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(host) = host {
        if !is_loopback_authority(host) {
            return Err(Refusal::ForeignHost);
        }
    } else if headers.contains_key(header::HOST) {
        // Present but not text.
        return Err(Refusal::ForeignHost);
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.as_bytes();
        if !(site.eq_ignore_ascii_case(b"same-origin") || site.eq_ignore_ascii_case(b"none")) {
            return Err(Refusal::ForeignOrigin);
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let own = host.map(|h| format!("http://{h}"));
        let same = origin.to_str().ok().is_some_and(|o| {
            own.as_deref()
                .is_some_and(|own| o.eq_ignore_ascii_case(own))
        });
        if !same {
            return Err(Refusal::ForeignOrigin);
        }
    }
    let private = PRIVATE_READS
        .iter()
        .any(|prefix| path == *prefix || path.starts_with(&format!("{prefix}/")));
    if (method == Method::GET || method == Method::HEAD) && !private {
        return Ok(());
    }
    if method == Method::POST && TOKEN_FREE_WRITES.contains(&path) {
        return Ok(());
    }
    match presented_token(headers) {
        None => Err(Refusal::MissingToken),
        Some(presented) if token.matches(presented) => Ok(()),
        Some(_) => Err(Refusal::WrongToken),
    }
}

/// The bearer token a request presents, if any.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// Whether an HTTP authority (`host[:port]`) names this machine's loopback.
fn is_loopback_authority(authority: &str) -> bool {
    // Split off the port (digits only, if present); IPv6 addresses come in brackets.
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, "")) => (v6, None),
            Some((v6, after)) => match after.strip_prefix(':') {
                Some(port) => (v6, Some(port)),
                None => return false,
            },
            None => return false,
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The middleware: refuses what [`check`] refuses, counted, with a JSON reason.
pub async fn guard(State(access): State<Access>, request: Request, next: Next) -> Response {
    match check(
        request.method(),
        request.uri().path(),
        request.headers(),
        &access.token,
    ) {
        Ok(()) => harden(next.run(request).await),
        Err(refusal) => {
            let reason = match refusal {
                Refusal::ForeignHost => "foreign_host",
                Refusal::ForeignOrigin => "foreign_origin",
                Refusal::MissingToken => "missing_token",
                Refusal::WrongToken => "wrong_token",
            };
            access.refused.get_or_create(&ReasonLabel { reason }).inc();
            tracing::debug!(?refusal, method = %request.method(), path = %request.uri().path(), "control API request refused");
            harden(
                (
                    refusal.status(),
                    Json(serde_json::json!({ "error": refusal.text() })),
                )
                    .into_response(),
            )
        }
    }
}

/// The headers every answer carries (see the module docs).
fn harden(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; sandbox"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn loopback_authorities() {
        for ok in [
            "127.0.0.1:7472",
            "127.0.0.1",
            "localhost:80",
            "LOCALHOST",
            "[::1]:7472",
            "[::1]",
            "127.3.4.5:1",
        ] {
            assert!(is_loopback_authority(ok), "{ok}");
        }
        for bad in [
            "evil.example:7472",
            "localhost.evil.example",
            "10.0.0.1:7472",
            "[::2]:1",
            "[::1",
            "[::1]x",
            "",
            "0.0.0.0:7472",
            "localhost.:7472",
            "localhost:7472@evil.example",
            "127.0.0.1:abc",
            "127.0.0.1:",
            "[::1]:x",
            "[::ffff:127.0.0.1]:7472",
            "0x7f.1:7472",
            "127.1:7472",
        ] {
            assert!(!is_loopback_authority(bad), "{bad}");
        }
    }

    #[test]
    fn reads_pass_the_host_and_origin_checks_without_a_token() {
        let token = ApiToken::generate();
        let ok = headers(&[("host", "127.0.0.1:7472")]);
        assert_eq!(check(&Method::GET, "/v1/status", &ok, &token), Ok(()));
        let same_origin = headers(&[
            ("host", "127.0.0.1:7472"),
            ("origin", "http://127.0.0.1:7472"),
        ]);
        assert_eq!(
            check(&Method::GET, "/v1/status", &same_origin, &token),
            Ok(())
        );
        let rebound = headers(&[("host", "attacker.example:7472")]);
        assert_eq!(
            check(&Method::GET, "/v1/status", &rebound, &token),
            Err(Refusal::ForeignHost)
        );
        let foreign = headers(&[
            ("host", "127.0.0.1:7472"),
            ("origin", "http://attacker.example"),
        ]);
        assert_eq!(
            check(&Method::GET, "/v1/status", &foreign, &token),
            Err(Refusal::ForeignOrigin)
        );
        let other_port = headers(&[
            ("host", "127.0.0.1:7472"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert_eq!(
            check(&Method::GET, "/v1/status", &other_port, &token),
            Err(Refusal::ForeignOrigin)
        );
        let opaque = headers(&[("host", "127.0.0.1:7472"), ("origin", "null")]);
        assert_eq!(
            check(&Method::GET, "/v1/status", &opaque, &token),
            Err(Refusal::ForeignOrigin)
        );
        for site in ["cross-site", "same-site"] {
            let other = headers(&[("host", "127.0.0.1:7472"), ("sec-fetch-site", site)]);
            assert_eq!(
                check(&Method::GET, "/v1/status", &other, &token),
                Err(Refusal::ForeignOrigin),
                "{site}"
            );
        }
        for site in ["same-origin", "none"] {
            let own = headers(&[("host", "127.0.0.1:7472"), ("sec-fetch-site", site)]);
            assert_eq!(check(&Method::GET, "/v1/status", &own, &token), Ok(()));
        }
    }

    #[test]
    fn writes_need_the_token() {
        let token = ApiToken::generate();
        let host = ("host", "127.0.0.1:7472");
        assert_eq!(
            check(&Method::PUT, "/v1/kv/default/k", &headers(&[host]), &token),
            Err(Refusal::MissingToken)
        );
        let wrong = ApiToken::generate();
        let bearer = |t: &ApiToken| format!("Bearer {}", t.as_str());
        assert_eq!(
            check(
                &Method::POST,
                "/v1/messages",
                &headers(&[host, ("authorization", &bearer(&wrong))]),
                &token
            ),
            Err(Refusal::WrongToken)
        );
        assert_eq!(
            check(
                &Method::DELETE,
                "/v1/tasks/x",
                &headers(&[host, ("authorization", &bearer(&token))]),
                &token
            ),
            Ok(())
        );
        // The token does not excuse a foreign origin.
        assert_eq!(
            check(
                &Method::POST,
                "/v1/messages",
                &headers(&[
                    host,
                    ("origin", "http://attacker.example"),
                    ("authorization", &bearer(&token))
                ]),
                &token
            ),
            Err(Refusal::ForeignOrigin)
        );
    }

    #[test]
    fn the_messages_are_private_reads() {
        let token = ApiToken::generate();
        let host = ("host", "127.0.0.1:7472");
        for path in ["/v1/messages", "/v1/messages/abcd"] {
            assert_eq!(
                check(&Method::GET, path, &headers(&[host]), &token),
                Err(Refusal::MissingToken),
                "{path}"
            );
            let bearer = format!("Bearer {}", token.as_str());
            assert_eq!(
                check(
                    &Method::GET,
                    path,
                    &headers(&[host, ("authorization", &bearer)]),
                    &token
                ),
                Ok(())
            );
        }
        assert_eq!(
            check(&Method::GET, "/v1/messagesx", &headers(&[host]), &token),
            Ok(())
        );
    }

    #[test]
    fn token_file_is_made_once_private_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(token_path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(token_path(dir.path()), "not a token").unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(TokenError::Corrupt { .. })
        ));
    }
}
