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
    assert_eq!(preflight.status(), 403);
    for (name, value) in [("origin", "null"), ("sec-fetch-site", "cross-site")] {
        let refused = http
            .get(format!("{base}/v1/status"))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 403, "{name}: {value}");
    }
    // Every route that changes the node refuses a request without the token, whatever
    // capability it belongs to; and the received messages are private reads.
    for (method, path) in [
        (reqwest::Method::POST, "/v1/tasks"),
        (reqwest::Method::DELETE, "/v1/tasks/00"),
        (reqwest::Method::POST, "/v1/messages"),
        (reqwest::Method::POST, "/v1/revocations"),
        (reqwest::Method::POST, "/v1/kv/default"),
        (reqwest::Method::DELETE, "/v1/kv/default/greeting"),
        (reqwest::Method::GET, "/v1/messages"),
        (reqwest::Method::GET, "/v1/messages/00"),
    ] {
        let answer = http
            .request(method.clone(), format!("{base}{path}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 401, "{method} {path}");
        assert_eq!(answer.headers()["x-content-type-options"], "nosniff");
    }
    assert_eq!(http.get(&kv).send().await.unwrap().status(), 404);

    // The page's own origin with the token writes.
    let own = put(Some(&token))
        .header("origin", base.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200, "{:?}", own.text().await);
    assert_eq!(http.get(&kv).send().await.unwrap().status(), 200);

    // A one-time sign-in code (what `dashboard --open` gives a browser) is issued only
    // with the token, traded once for it, and only by the node's own origin.
    let codes = format!("{base}/v1/signin/codes");
    assert_eq!(http.post(&codes).send().await.unwrap().status(), 401);
    let issue = || async {
        let issued: serde_json::Value = http
            .post(&codes)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        issued["code"].as_str().unwrap().to_owned()
    };
    let trade = |code: String, origin: &str| {
        http.post(format!("{base}/v1/signin"))
            .header("origin", origin)
            .json(&serde_json::json!({ "code": code }))
            .send()
    };
    let code = issue().await;
    assert_eq!(
        trade(code.clone(), "http://attacker.example")
            .await
            .unwrap()
            .status(),
        403
    );
    let traded: serde_json::Value = trade(code.clone(), &base)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(traded["token"], token.as_str());
    assert_eq!(trade(code, &base).await.unwrap().status(), 401, "used once");

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
    // Opened as `dashboard --open` opens it: with a one-time code the page trades for the
    // token (the benchmark opens it with the token itself).
    let code = ControlClient::new(addr)
        .with_token(node.api_token.clone())
        .signin_code()
        .await
        .unwrap();
    page.goto(&format!("http://{addr}/ui/#code={code}"))
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
    assert!(!url.as_str().contains("code="), "code left in {url}");
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
    let receiver = net.node(1).unwrap();
    let receiver = ControlClient::new(receiver.control_addr).with_token(receiver.api_token.clone());
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
