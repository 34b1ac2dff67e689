//! `fogmesh testnet dashboard`: one page for a whole local testnet.
//!
//! The page cannot ask every node itself: each node's API refuses requests from another
//! origin (`crate::control::access`), and that is as it should be. So this command runs a
//! small server on 127.0.0.1 that serves the same page, lists the testnet
//! (`GET /v1/testnet`: nodes, whether each is alive, radio neighbours) and passes
//! `/node/{index}/...` on to node `index`'s control API. It has a token of its own, made
//! per run and printed in the URL; a write that carries it is passed on with that node's
//! own token (read from the node's data dir), so the page never learns node tokens. The
//! same host and origin checks guard this server as every node.
//!
//! Nodes of a NAT lab listen inside their network namespaces, out of this server's reach:
//! they are listed with `reachable: false`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{any, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::control::access::{self, Access, ApiToken};
use crate::control::{api_error, ApiError};

/// Largest request body passed on (the store's batch limit and some).
const MAX_FORWARD_BODY: usize = 40 * 1024 * 1024;

/// `GET /v1/testnet`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestnetView {
    pub dir: PathBuf,
    pub nodes: Vec<TestnetNode>,
    /// Radio neighbours of a radio testnet (`None` for an internet one).
    pub radio: Option<RadioView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestnetNode {
    pub index: usize,
    pub name: String,
    /// Where the page finds this node's API (`/node/3`; its `/v1/...` below it).
    pub base: String,
    pub alive: bool,
    /// Whether this server can reach the node's API (not for NAT lab nodes).
    pub reachable: bool,
    pub peer_id: Option<String>,
    pub control_port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RadioView {
    /// Pairs of node indexes in radio range of each other, each pair once.
    pub links: Vec<[usize; 2]>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    http: reqwest::Client,
    /// This server's token: requests that carry it are passed on with the node's.
    token: ApiToken,
    /// The last `/v1/testnet` answer and when it was made: every open page asks every few
    /// seconds, and an answer probes every node.
    listed: tokio::sync::Mutex<Option<(std::time::Instant, TestnetView)>>,
}

/// How long a `/v1/testnet` answer is reused.
const LISTING_TTL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TestnetDashboardError {
    #[error("cannot listen on 127.0.0.1:{port}: {reason}")]
    Bind { port: u16, reason: String },
    #[error("no testnet in {0}: start one with `fogmesh testnet up --dir {0}`")]
    NoTestnet(PathBuf),
    #[error(transparent)]
    Testnet(#[from] fogmesh_testnet::TestnetError),
}

/// A running testnet dashboard server.
#[derive(Debug)]
pub struct TestnetDashboard {
    pub addr: SocketAddr,
    pub token: ApiToken,
    /// One-time codes for opening the page in a browser (`crate::control::signin`).
    pub codes: Arc<crate::control::signin::SignInCodes>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestnetDashboard {
    /// The address to open: the page, with this server's token in the fragment.
    pub fn url(&self) -> String {
        page_url(self.addr, Some(&self.token))
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// `http://ADDR/ui/#code=...`: the page with a one-time sign-in code, for a browser's
/// command line (`crate::control::signin`).
pub fn page_url_with_code(addr: SocketAddr, code: &str) -> String {
    format!("http://{addr}{}#code={code}", super::PAGE_PATH)
}

/// `http://ADDR/ui/#token=...`: the page with a token, or read-only without.
pub fn page_url(addr: SocketAddr, token: Option<&ApiToken>) -> String {
    match token {
        Some(token) => format!("http://{addr}{}#token={}", super::PAGE_PATH, token.as_str()),
        None => format!("http://{addr}{}", super::PAGE_PATH),
    }
}

/// Starts the server for the testnet in `dir` on 127.0.0.1:`port` (0: any free port).
pub async fn start(dir: &Path, port: u16) -> Result<TestnetDashboard, TestnetDashboardError> {
    if fogmesh_testnet::state::load(dir)?.is_none() {
        return Err(TestnetDashboardError::NoTestnet(dir.to_path_buf()));
    }
    let bind = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener =
        tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|e| TestnetDashboardError::Bind {
                port,
                reason: e.to_string(),
            })?;
    let addr = listener
        .local_addr()
        .map_err(|e| TestnetDashboardError::Bind {
            port,
            reason: e.to_string(),
        })?;
    let token = ApiToken::generate();
    let mut registry = prometheus_client::registry::Registry::default();
    let access = Access::new(token.clone(), &mut registry);
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .no_proxy()
        .build()
        .unwrap_or_default();
    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        http,
        token: token.clone(),
        listed: tokio::sync::Mutex::new(None),
    });
    let codes: Arc<crate::control::signin::SignInCodes> = Arc::default();
    let router = Router::new()
        .route("/v1/testnet", get(testnet_view))
        .route("/node/{index}/{*rest}", any(forward))
        .with_state(shared)
        .merge(super::page_routes(super::dev_dir()))
        .merge(crate::control::signin::routes(
            crate::control::signin::SignIn {
                token: token.clone(),
                codes: codes.clone(),
            },
        ))
        .layer(axum::middleware::from_fn_with_state(access, access::guard));
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(crate::control::server::serve(
        listener,
        router,
        Arc::default(),
        stopped,
    ));
    Ok(TestnetDashboard {
        addr,
        token,
        codes,
        stop: Some(stop),
        task,
    })
}

async fn testnet_view(State(shared): State<Arc<Shared>>) -> Result<Json<TestnetView>, ApiError> {
    // One listing at a time; the others wait for it and take it.
    let mut listed = shared.listed.lock().await;
    if let Some((at, view)) = listed.as_ref() {
        if at.elapsed() < LISTING_TTL {
            return Ok(Json(view.clone()));
        }
    }
    let view = list(&shared.dir).await?;
    *listed = Some((std::time::Instant::now(), view.clone()));
    Ok(Json(view))
}

async fn list(dir: &Path) -> Result<TestnetView, ApiError> {
    let status = fogmesh_testnet::status(dir)
        .await
        .map_err(|e| api_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let nodes = status
        .nodes
        .iter()
        .map(|row| TestnetNode {
            index: row.index,
            name: format!("node-{}", row.index),
            base: format!("/node/{}", row.index),
            alive: row.alive,
            reachable: row.namespace.is_none(),
            peer_id: row.status.as_ref().map(|s| s.peer_id.clone()),
            control_port: row.control_port,
        })
        .collect();
    let mut links = Vec::new();
    for row in &status.nodes {
        for &other in row.radio_neighbours.iter().flatten() {
            if row.index < other {
                links.push([row.index, other]);
            }
        }
    }
    let radio = status
        .nodes
        .iter()
        .any(|row| row.radio_neighbours.is_some())
        .then_some(RadioView { links });
    Ok(TestnetView {
        dir: status.dir,
        nodes,
        radio,
    })
}

/// Passes a request on to node `index`, streaming the answer (the event stream included).
///
/// The path goes on exactly as it came, still percent-encoded (a store key `a?b` or
/// `x/../y` stays one key), and a path with a `.` or `..` segment, however spelled, is
/// refused: nothing the page sends can become another route of the node.
async fn forward(
    State(shared): State<Arc<Shared>>,
    UrlPath((index, _)): UrlPath<(usize, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let rest = raw_rest(request.uri().path(), index)
        .ok_or_else(|| api_error(StatusCode::BAD_REQUEST, "not a path this server passes on"))?
        .to_owned();
    let state = fogmesh_testnet::state::load(&shared.dir)
        .map_err(|e| api_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .ok_or_else(|| api_error(StatusCode::NOT_FOUND, "the testnet is gone"))?;
    let node = state
        .nodes
        .iter()
        .find(|n| n.index == index)
        .ok_or_else(|| api_error(StatusCode::NOT_FOUND, format!("no node {index}")))?;
    if node.namespace.is_some() {
        return Err(api_error(
            StatusCode::BAD_GATEWAY,
            format!("node {index} runs in a network namespace; its API is out of reach"),
        ));
    }
    // Only to the node's own live process: a port left behind by a dead node may be
    // anyone's now, and must not get the node's token.
    let port = fogmesh_testnet::live_control_port(node).ok_or_else(|| {
        api_error(
            StatusCode::BAD_GATEWAY,
            format!("node {index} is not running"),
        )
    })?;
    let mut url = format!("http://127.0.0.1:{port}{rest}");
    if let Some(query) = request.uri().query() {
        url.push('?');
        url.push_str(query);
    }
    let url =
        reqwest::Url::parse(&url).map_err(|e| api_error(StatusCode::BAD_REQUEST, e.to_string()))?;
    let method = request.method().clone();
    let writes = method != axum::http::Method::GET && method != axum::http::Method::HEAD;
    let mut outbound = shared.http.request(method, url);
    let (parts, body) = request.into_parts();
    let request_headers = &parts.headers;
    if writes {
        if let Some(content_type) = request_headers.get(header::CONTENT_TYPE) {
            outbound = outbound.header(header::CONTENT_TYPE, content_type.clone());
        }
        let body = axum::body::to_bytes(body, MAX_FORWARD_BODY)
            .await
            .map_err(|e| api_error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()))?;
        outbound = outbound.body(body);
    }
    // A request with this server's token (the guard checked it for writes) goes on with the
    // node's own; one without goes on without, so the node's private reads stay private.
    if shared.token.is_presented_in(request_headers) {
        let token = node_token(&node.data_dir)?;
        outbound = outbound.bearer_auth(token.as_str());
    }
    let answer = outbound.send().await.map_err(|e| {
        api_error(
            StatusCode::BAD_GATEWAY,
            format!("node {index} did not answer: {e}"),
        )
    })?;
    let mut response = Response::builder().status(answer.status().as_u16());
    for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
        if let Some(value) = answer.headers().get(name.as_str()) {
            if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
                response = response.header(name, value);
            }
        }
    }
    // Chunk by chunk, so the event stream flows; an error ends the body.
    let chunks = futures::stream::unfold(Some(answer), |answer| async move {
        let mut answer = answer?;
        match answer.chunk().await {
            Ok(Some(bytes)) => Some((Ok(bytes), Some(answer))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    });
    response
        .body(Body::from_stream(chunks))
        .map_err(|e| api_error(StatusCode::BAD_GATEWAY, e.to_string()))
}

/// The part of a raw (still percent-encoded) request path after `/node/{index}`, starting
/// with `/`; `None` if the path is spelled otherwise or has a dot segment (`.`, `..`, also
/// as `%2e`), which URL parsing would resolve into another route.
fn raw_rest(path: &str, index: usize) -> Option<&str> {
    let rest = path.strip_prefix(&format!("/node/{index}"))?;
    if !rest.starts_with('/') {
        return None;
    }
    let dot_segment = rest.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    });
    (!dot_segment).then_some(rest)
}

fn node_token(data_dir: &Path) -> Result<ApiToken, ApiError> {
    match access::read(data_dir) {
        Ok(Some(token)) => Ok(token),
        Ok(None) => Err(api_error(
            StatusCode::BAD_GATEWAY,
            format!(
                "{} has no api-token: the node predates control API tokens",
                data_dir.display()
            ),
        )),
        Err(e) => Err(api_error(StatusCode::BAD_GATEWAY, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_go_on_as_they_came_and_dot_segments_are_refused() {
        assert_eq!(raw_rest("/node/3/v1/status", 3), Some("/v1/status"));
        assert_eq!(
            raw_rest("/node/3/v1/kv/default/a%3Fb%2F..%2Fx", 3),
            Some("/v1/kv/default/a%3Fb%2F..%2Fx")
        );
        for bad in [
            "/node/3/v1/kv/default/x/../../tasks/1",
            "/node/3/v1/kv/default/%2e%2e/tasks",
            "/node/3/v1/kv/default/%2E./tasks",
            "/node/3/v1/./status",
            "/node/33/v1/status",
            "/node/3",
            "/node/%33/v1/status",
        ] {
            assert_eq!(raw_rest(bad, 3), None, "{bad}");
        }
    }
}
