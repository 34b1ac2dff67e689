#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The dashboard: the control API keeps other web pages out (host, origin, token), and the
//! page itself, loaded in a real headless Chromium from a small in-process mesh, shows
//! every node and the cluster's coordinator, writes to the store and sends a message that
//! other nodes receive, and filters what it shows.
//!
//! The browser test needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them); without them it prints one "skipped" line and passes. Screenshots of every view
//! land in `target/dashboard-screenshots/` (not committed).

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use browser::{browser, click, count, fill, js, screenshot, show, start_chromedriver};
use common::{eventually, wait_until};
use fantoccini::Locator;
use fogmesh_node::client::ControlClient;
use fogmesh_node::memnet::{MemNet, Topology};
use serde_json::Value;

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn one_node() -> (tempfile::TempDir, MemNet) {
    let dir = tempfile::tempdir().unwrap();
    let net = common::memnet(dir.path(), Duration::from_secs(1))
        .nodes(1)
        .start()
        .await
        .unwrap();
    (dir, net)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_web_pages_cannot_drive_the_control_api() {
    let (_dir, net) = one_node().await;
    let node = net.node(0).unwrap();
    let base = format!("http://{}", node.control_addr);
    let token = node.api_token.as_str().to_owned();
    let http = http();
    let kv = format!("{base}/v1/kv/default/greeting");

    // The page is served, with a policy that forbids foreign scripts and framing.
    let page = http.get(format!("{base}/ui/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert!(page.text().await.unwrap().contains("js/main.js"));

    // A write without the token, or with another, is refused and changes nothing.
    let put = |token: Option<&str>| {
        let request = http.put(&kv).body("hello");
        match token {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
    };
    assert_eq!(put(None).send().await.unwrap().status(), 401);
    let wrong = "0".repeat(64);
    assert_eq!(put(Some(&wrong)).send().await.unwrap().status(), 401);
    assert_eq!(http.get(&kv).send().await.unwrap().status(), 404);

    // DNS rebinding: a foreign name resolved to 127.0.0.1 still says so in Host.
    let rebound = http
        .get(format!("{base}/v1/status"))
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    // Another origin, even with the token (say, pasted into a phishing page), is refused;
    // and nothing tells a browser to let it read answers.
    let foreign = put(Some(&token))
        .header("origin", "http://attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    assert!(foreign
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    let preflight = http
        .request(reqwest::Method::OPTIONS, &kv)
        .header("origin", "http://attacker.example")
        .header("access-control-request-method", "PUT")
        .send()
        .await
        .unwrap();
    assert!(preflight
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    assert_eq!(http.get(&kv).send().await.unwrap().status(), 404);

    // The page's own origin with the token writes.
    let own = put(Some(&token))
        .header("origin", base.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200, "{:?}", own.text().await);
    assert_eq!(http.get(&kv).send().await.unwrap().status(), 200);

    // Refusals are counted by reason.
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in [
        "missing_token",
        "wrong_token",
        "foreign_host",
        "foreign_origin",
    ] {
        assert!(
            metrics.contains(&format!(
                "fogmesh_control_refused_total{{reason=\"{reason}\"}}"
            )),
            "{reason} not counted:\n{metrics}"
        );
    }
}

fn cluster_coordinator(net: &MemNet, node: usize) -> Option<String> {
    let view = fogmesh_node::cluster::api::view(net.handle(node)?);
    (view.state == "member")
        .then_some(view.coordinator)
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_mesh_and_drives_the_node_in_a_real_browser() {
    let Some(driver) = start_chromedriver(Duration::from_secs(20)).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let net = common::memnet(dir.path(), Duration::from_millis(500))
        .nodes(3)
        .topology(Topology::Star)
        .start()
        .await
        .unwrap();
    net.wait_converged(Duration::from_secs(30)).await.unwrap();
    let coordinator = eventually("one coordinator", Duration::from_secs(60), || async {
        let c = cluster_coordinator(&net, 0)?;
        (0..3)
            .all(|i| cluster_coordinator(&net, i).as_deref() == Some(c.as_str()))
            .then_some(c)
    })
    .await;
    let peers: Vec<String> = (0..3)
        .map(|i| net.peer_id(i).unwrap().to_string())
        .collect();
    let node = net.node(0).unwrap();
    let addr: SocketAddr = node.control_addr;

    let profile = tempfile::tempdir().unwrap();
    let page = browser(&driver, profile.path(), (1280, 900)).await;
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots");
    page.goto(&format!(
        "http://{addr}/ui/#token={}",
        node.api_token.as_str()
    ))
    .await
    .unwrap();

    // The token was taken from the address bar and the page may write.
    wait_until(
        "the page holds the token",
        Duration::from_secs(10),
        || async {
            js(
                &page,
                "return document.querySelector('#auth-state')?.textContent ?? ''",
            )
            .await
            .as_str()
            .is_some_and(|t| t.contains("control"))
        },
    )
    .await;
    let url = page.current_url().await.unwrap();
    assert!(!url.as_str().contains("token="), "token left in {url}");
    screenshot(&page, &shots, "node").await;

    // Every node appears in the mesh view, in the table and in the graph.
    show(&page, "mesh").await;
    wait_until(
        "every node in the table",
        Duration::from_secs(15),
        || async {
            let mut all = true;
            for peer in &peers {
                all &= count(&page, &format!("#mesh-nodes tr[data-peer=\"{peer}\"]")).await == 1;
            }
            all
        },
    )
    .await;
    wait_until(
        "every node in the graph",
        Duration::from_secs(10),
        || async {
            js(
                &page,
                "return document.querySelector('#mesh-graph')?.dataset.nodeCount ?? '0'",
            )
            .await
            .as_str()
            .and_then(|n| n.parse::<usize>().ok())
                == Some(3)
        },
    )
    .await;
    screenshot(&page, &shots, "mesh").await;

    // A filter hides what it should: by role, only the coordinator is left.
    page.find(Locator::Css("#filter-role"))
        .await
        .unwrap()
        .select_by_value("coordinator")
        .await
        .unwrap();
    wait_until(
        "only the coordinator shown",
        Duration::from_secs(10),
        || async {
            count(&page, "#mesh-nodes tr[data-peer]:not([hidden])").await == 1
                && count(
                    &page,
                    &format!("#mesh-nodes tr[data-peer=\"{coordinator}\"]:not([hidden])"),
                )
                .await
                    == 1
        },
    )
    .await;
    page.find(Locator::Css("#filter-role"))
        .await
        .unwrap()
        .select_by_value("any")
        .await
        .unwrap();

    // The cluster shows its coordinator.
    show(&page, "clusters").await;
    wait_until(
        "the coordinator is shown",
        Duration::from_secs(10),
        || async {
            count(
                &page,
                &format!(".cluster .coordinator[data-peer=\"{coordinator}\"]"),
            )
            .await
                >= 1
        },
    )
    .await;
    screenshot(&page, &shots, "clusters").await;

    // A key put on the page reaches another node's store.
    show(&page, "store").await;
    fill(&page, "#kv-key", "from-the-page").await;
    fill(&page, "#kv-value", "written in a browser").await;
    click(&page, "#kv-put").await;
    let other = ControlClient::new(net.node(2).unwrap().control_addr);
    let namespace = js(
        &page,
        "return document.querySelector('#kv-namespace').value",
    )
    .await
    .as_str()
    .unwrap_or("default")
    .to_owned();
    eventually("the key on node 2", Duration::from_secs(15), || async {
        let key = other.kv_get(&namespace, "from-the-page").await.ok()??;
        let value = serde_json::to_string(&key).ok()?;
        value.contains("written in a browser").then_some(())
    })
    .await;
    screenshot(&page, &shots, "store").await;

    // A message sent from the page is delivered.
    show(&page, "messages").await;
    fill(&page, "#msg-to", &peers[1]).await;
    fill(&page, "#msg-text", "hello from the dashboard").await;
    click(&page, "#msg-send").await;
    let receiver = ControlClient::new(net.node(1).unwrap().control_addr);
    eventually(
        "the message in node 1's inbox",
        Duration::from_secs(20),
        || async {
            let inbox = serde_json::to_string(&receiver.messages().await.ok()?).ok()?;
            inbox.contains("hello from the dashboard").then_some(())
        },
    )
    .await;
    wait_until(
        "the page shows it delivered",
        Duration::from_secs(20),
        || async {
            count(
                &page,
                "#msg-sent [data-message-id][data-state=\"delivered\"]",
            )
            .await
                >= 1
        },
    )
    .await;
    screenshot(&page, &shots, "messages").await;

    show(&page, "events").await;
    wait_until("events arrive", Duration::from_secs(15), || async {
        count(&page, "#events-list > *").await >= 1
    })
    .await;
    screenshot(&page, &shots, "events").await;
    show(&page, "traffic").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    screenshot(&page, &shots, "traffic").await;

    page.close().await.unwrap();
    drop(driver);
}

/// `fogmesh testnet dashboard`'s server, over two in-process nodes described by a testnet
/// state file: it lists the nodes, passes reads on, passes writes on with the node's own
/// token only when they carry its own, streams events, and keeps foreign pages out too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_testnet_dashboard_passes_requests_on_with_its_own_token() {
    use fogmesh_testnet::state::{self, NodeEntry, TestnetState};
    let dir = tempfile::tempdir().unwrap();
    let net = common::memnet(dir.path(), Duration::from_millis(500))
        .nodes(2)
        .start()
        .await
        .unwrap();
    let testnet_dir = dir.path().join("testnet");
    std::fs::create_dir_all(&testnet_dir).unwrap();
    let nodes = (0..2)
        .map(|index| NodeEntry {
            index,
            pid: std::process::id(),
            start_time: None,
            data_dir: net.dir(index).unwrap().to_path_buf(),
            log_file: dir.path().join("log"),
            p2p_port: 0,
            control_port: net.node(index).unwrap().control_addr.port(),
            command: None,
            started_at_ms: None,
            killed: None,
            namespace: None,
        })
        .collect();
    state::save(
        &testnet_dir,
        &TestnetState {
            created_at_ms: 1,
            nodes,
            lab: None,
        },
    )
    .unwrap();
    let server = fogmesh_node::dashboard::testnet::start(&testnet_dir, 0)
        .await
        .unwrap();
    let base = format!("http://{}", server.addr);
    let http = http();

    let listed: Value = http
        .get(format!("{base}/v1/testnet"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["nodes"].as_array().unwrap().len(), 2, "{listed}");
    assert_eq!(listed["nodes"][1]["base"], "/node/1");

    let status: Value = http
        .get(format!("{base}/node/1/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["peer_id"], net.peer_id(1).unwrap().to_string());
    let page = http.get(format!("{base}/ui/")).send().await.unwrap();
    assert_eq!(page.status(), 200);

    let kv = format!("{base}/node/1/v1/kv/default/via-proxy");
    let refused = http.put(&kv).body("x").send().await.unwrap();
    assert_eq!(refused.status(), 401);
    // A node's own token is not this server's: the page never needs node tokens.
    let node_token = net.node(1).unwrap().api_token.as_str().to_owned();
    let refused = http
        .put(&kv)
        .bearer_auth(&node_token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let foreign = http
        .put(&kv)
        .bearer_auth(server.token.as_str())
        .header("origin", "http://attacker.example")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    let written = http
        .put(&kv)
        .bearer_auth(server.token.as_str())
        .body("through the testnet dashboard")
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 200, "{:?}", written.text().await);
    let held = ControlClient::new(net.node(1).unwrap().control_addr)
        .kv_get("default", "via-proxy")
        .await
        .unwrap();
    assert!(held.is_some());

    // The event stream flows through, event by event.
    let mut events = http
        .get(format!("{base}/node/0/v1/events"))
        .send()
        .await
        .unwrap();
    assert!(events.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let chunk = tokio::time::timeout(Duration::from_secs(10), events.chunk())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&chunk).contains("data:"));
    drop(events);
    server.stop().await;
}
