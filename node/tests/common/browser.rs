//! Driving headless Chromium through chromedriver (WebDriver), for the dashboard's test
//! and its benchmark (`examples/dashboard_bench.rs`): Debian's `chromium` and
//! `chromium-driver`, started with the flags a machine without internet needs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver we started, killed when dropped.
pub struct Driver {
    // Held so the process lives as long as the test needs it (killed on drop).
    _child: tokio::process::Child,
    port: u16,
}

/// Starts chromedriver on a free port; `None` (after saying why) without Chromium.
pub async fn start_chromedriver(within: Duration) -> Option<Driver> {
    if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists() {
        eprintln!(
            "skipped: {CHROMIUM} and {CHROMEDRIVER} are needed (Debian: apt-get install chromium chromium-driver; .ci/run does it)"
        );
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let driver = Driver {
        _child: child,
        port,
    };
    let status = format!("http://127.0.0.1:{port}/status");
    let http = reqwest::Client::builder().no_proxy().build().ok()?;
    let started = std::time::Instant::now();
    while started.elapsed() < within {
        if let Ok(answer) = http.get(&status).send().await {
            if answer.status().is_success() {
                return Some(driver);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not answer within {within:?}");
}

/// A headless Chromium session of `size` (width, height) with its profile in `profile`.
pub async fn browser(driver: &Driver, profile: &Path, size: (u32, u32)) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                format!("--window-size={},{}", size.0, size.1),
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .unwrap()
}

pub async fn js(page: &Client, script: &str) -> Value {
    page.execute(script, Vec::new()).await.unwrap()
}

pub async fn count(page: &Client, selector: &str) -> u64 {
    let script = format!(
        "return document.querySelectorAll({}).length",
        serde_json::to_string(selector).unwrap()
    );
    js(page, &script).await.as_u64().unwrap_or(0)
}

pub async fn show(page: &Client, view: &str) {
    page.find(Locator::Css(&format!("button[data-view=\"{view}\"]")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

pub async fn fill(page: &Client, selector: &str, text: &str) {
    let field = page.find(Locator::Css(selector)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

pub async fn click(page: &Client, selector: &str) {
    page.find(Locator::Css(selector))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Saves what the page shows as `<dir>/<name>.png`, best effort.
pub async fn screenshot(page: &Client, dir: &Path, name: &str) {
    let _ = std::fs::create_dir_all(dir);
    if let Ok(png) = page.screenshot().await {
        let _ = std::fs::write(dir.join(format!("{name}.png")), png);
    }
}
