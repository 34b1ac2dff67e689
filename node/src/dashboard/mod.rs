//! The dashboard: a web page for people, served by the node's own control API at `/ui/`,
//! from files compiled into the binary (`assets/`, listed by `build.rs`): no CDN, no
//! internet, nothing to install. The page is a client of the same API as the CLI and
//! passes the same access checks (`crate::control::access`): it reads without a token and
//! writes with the one `fogmesh dashboard` hands it in the URL's fragment.
//!
//! The capability holds no state and takes no inputs; it only adds routes. The page's files
//! carry a Content-Security-Policy that allows this origin's scripts, styles and
//! connections only and forbids framing (clickjacking), so even a value in the store that
//! looks like markup can never run as script; every other answer of the API gets
//! `default-src 'none'; sandbox` (`crate::control::access`).
//!
//! For front-end work, `FOGMESH_DASHBOARD_DIR=<dir>` on `fogmesh run` serves the files
//! from that folder instead (read per request: edit, reload, no rebuild). docs/dashboard.md
//! has the page's design.

pub mod assets;
pub mod testnet;

use axum::extract::Path as UrlPath;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::runtime::capability::Capability;
use crate::runtime::registration::{Registered, Setup, SetupError};

/// The environment variable naming a folder to serve the page from instead of the
/// compiled-in copy.
pub const DEV_DIR_VAR: &str = "FOGMESH_DASHBOARD_DIR";

/// Where the page lives.
pub const PAGE_PATH: &str = "/ui/";

/// Security headers of every dashboard answer (see the module docs).
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                   script-src 'self'; connect-src 'self'; object-src 'none'; \
                   base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn register(_setup: &mut Setup<'_>) -> Result<Registered, SetupError> {
    Ok(Registered {
        capability: Box::new(Dashboard),
        routes: page_routes(dev_dir()),
    })
}

/// The capability itself: nothing but a name; its work is the routes.
#[derive(Debug)]
struct Dashboard;

impl Capability for Dashboard {
    fn name(&self) -> &'static str {
        "dashboard"
    }
}

/// The folder [`DEV_DIR_VAR`] names, if set.
pub fn dev_dir() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os(DEV_DIR_VAR).map(std::path::PathBuf::from)?;
    tracing::info!(dir = %dir.display(), "dashboard served from disk ({DEV_DIR_VAR})");
    Some(dir)
}

/// The page and its files, for a node's API or the testnet dashboard's server.
pub fn page_routes<S: Clone + Send + Sync + 'static>(
    dev_dir: Option<std::path::PathBuf>,
) -> Router<S> {
    let index_dir = dev_dir.clone();
    Router::new()
        .route("/", get(|| async { Redirect::to(PAGE_PATH) }))
        .route("/ui", get(|| async { Redirect::to(PAGE_PATH) }))
        .route(
            PAGE_PATH,
            get(move || {
                let dir = index_dir.clone();
                async move { asset(dir.as_deref(), "index.html").await }
            }),
        )
        .route(
            "/ui/{*path}",
            get(move |UrlPath(path): UrlPath<String>| {
                let dir = dev_dir.clone();
                async move { asset(dir.as_deref(), &path).await }
            }),
        )
}

async fn asset(dev_dir: Option<&std::path::Path>, path: &str) -> Response {
    let bytes = match dev_dir {
        None => assets::get(path).map(std::borrow::Cow::Borrowed),
        Some(dir) => match assets::safe_relative(path) {
            Some(relative) => tokio::fs::read(dir.join(relative))
                .await
                .ok()
                .map(std::borrow::Cow::Owned),
            None => None,
        },
    };
    let Some(bytes) = bytes else {
        return (StatusCode::NOT_FOUND, "no such dashboard file").into_response();
    };
    let mut response = bytes.into_owned().into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(assets::content_type(path)),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The files change with the binary; they are small, so revalidating costs little.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
