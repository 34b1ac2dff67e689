//! The `fogmesh` binary as a person uses it: testnets, signals, restarts and bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, inet_sockets_of, wait_until};
use fogmesh_node::client::ControlClient;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fogmesh")
}

/// An empty config file, so the developer's own config never leaks into a test.
fn empty_config(dir: &Path) -> PathBuf {
    let path = dir.join("empty.toml");
    std::fs::write(&path, "").unwrap();
    path
}

fn fogmesh(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("fogmesh runs")
}

/// Runs `fogmesh testnet down` on drop, so a failing assertion leaves no node running.
struct TestnetGuard(String);

impl Drop for TestnetGuard {
    fn drop(&mut self) {
        let _ = fogmesh(&["testnet", "down", "--dir", &self.0]);
    }
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn spawn_node(config: &Path, data_dir: &Path, extra: &[&str]) -> Child {
    Command::new(bin())
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--no-quic"])
        .args(["--telemetry-interval", "300ms"])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node process starts")
}

async fn client_for(data_dir: &Path) -> ControlClient {
    let what = format!("the node at {} answers", data_dir.display());
    eventually(&what, Duration::from_secs(30), || async {
        let client = ControlClient::for_data_dir(data_dir).ok()?;
        client.status().await.ok().map(|_| client)
    })
    .await
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

#[test]
fn testnet_up_status_down_leaves_nothing_running() {
    let dir = tempfile::tempdir().unwrap();
    let tn = dir.path().join("tn");
    let tn_arg = tn.to_str().unwrap();
    let up = fogmesh(&[
        "testnet",
        "up",
        "--nodes",
        "3",
        "--dir",
        tn_arg,
        "--timeout",
        "90s",
    ]);
    // Whatever fails below, the testnet's processes do not outlive the test.
    let _down = TestnetGuard(tn_arg.to_owned());
    assert!(up.status.success(), "up failed: {}", stderr_of(&up));
    let table = String::from_utf8_lossy(&up.stdout);
    assert!(table.contains("converged in"), "{table}");

    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tn.join("testnet.json")).unwrap()).unwrap();
    let pids: Vec<u32> = state["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["pid"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|p| pid_alive(*p)));

    let status = fogmesh(&["testnet", "status", "--dir", tn_arg, "--json"]);
    assert!(status.status.success(), "{}", stderr_of(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    for node in status["nodes"].as_array().unwrap() {
        assert_eq!(node["alive"], true);
        assert_eq!(node["status"]["telemetry_nodes"], 2);
    }

    let peer_1 = status["nodes"][1]["status"]["peer_id"].clone();

    // Every node holds the testnet's token, and `dashboard` hands it to the page.
    let token = std::fs::read_to_string(tn.join("api-token")).unwrap();
    for i in 0..3 {
        let node_token = tn.join(format!("node-{i}")).join("api-token");
        assert_eq!(std::fs::read_to_string(node_token).unwrap(), token);
    }
    let node_0 = tn.join("node-0");
    let dashboard = fogmesh(&[
        "dashboard",
        "--data-dir",
        node_0.to_str().unwrap(),
        "--json",
    ]);
    assert!(dashboard.status.success(), "{}", stderr_of(&dashboard));
    let dashboard: serde_json::Value = serde_json::from_slice(&dashboard.stdout).unwrap();
    let port = status["nodes"][0]["control_port"].as_u64().unwrap();
    assert_eq!(
        dashboard["url"],
        format!("http://127.0.0.1:{port}/ui/#token={}", token.trim())
    );
    assert_eq!(dashboard["read_only"], false);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(testnet_dashboard_passes_requests_on(&tn, &status));

    // A second `up` in the same directory refuses to start another testnet.
    let again = fogmesh(&["testnet", "up", "--nodes", "2", "--dir", tn_arg]);
    assert!(!again.status.success());
    assert!(stderr_of(&again).contains("already running"));

    // Fault test: SIGKILL node 1. Its control.json stays behind, stale, and must not fool status.
    let node_1 = tn.join("node-1");
    let killed = fogmesh(&["testnet", "kill", "--node", "1", "--dir", tn_arg]);
    assert!(killed.status.success(), "{}", stderr_of(&killed));
    assert!(!pid_alive(pids[1]));
    assert!(node_1.join("control.json").exists());
    let status = testnet_status(tn_arg);
    assert_eq!(status["nodes"][1]["alive"], false);
    assert_eq!(status["nodes"][1]["killed"]["signal"], "SIGKILL");
    assert_eq!(status["nodes"][0]["alive"], true);

    // Restart runs the recorded command line: same identity, log appended, new PID recorded.
    let log_before = std::fs::read(node_1.join("node.log")).unwrap();
    let restarted = fogmesh(&[
        "testnet", "restart", "--node", "1", "--dir", tn_arg, "--json",
    ]);
    assert!(restarted.status.success(), "{}", stderr_of(&restarted));
    let report: serde_json::Value = serde_json::from_slice(&restarted.stdout).unwrap();
    let restarted_pid = report["pid"].as_u64().unwrap() as u32;
    assert!(pid_alive(restarted_pid));
    let log_after = std::fs::read(node_1.join("node.log")).unwrap();
    assert!(log_after.len() > log_before.len() && log_after.starts_with(&log_before));
    let status = testnet_status(tn_arg);
    assert_eq!(status["nodes"][1]["alive"], true);
    assert_eq!(status["nodes"][1]["pid"], restarted_pid);
    assert_eq!(status["nodes"][1]["killed"], serde_json::Value::Null);
    assert_eq!(status["nodes"][1]["status"]["peer_id"], peer_1);

    // Killed again and restarted by hand: the state file does not know the new PID, but the
    // node's control.json and command line tie it to the testnet, so status and down find it.
    let killed = fogmesh(&["testnet", "kill", "--node", "1", "--dir", tn_arg]);
    assert!(killed.status.success(), "{}", stderr_of(&killed));
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tn.join("testnet.json")).unwrap()).unwrap();
    let command: Vec<&str> = state["nodes"][1]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let mut by_hand = Command::new(command[0])
        .args(&command[1..])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let control_names_it = || {
        std::fs::read(node_1.join("control.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|c| c["pid"] == by_hand.id())
    };
    let started = Instant::now();
    while !control_names_it() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no control.json"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = testnet_status(tn_arg);
    assert_eq!(status["nodes"][1]["alive"], true);
    assert_eq!(status["nodes"][1]["pid"], by_hand.id());
    assert_eq!(status["nodes"][1]["found_by"], "control_file");

    let down = fogmesh(&["testnet", "down", "--dir", tn_arg]);
    assert!(down.status.success(), "{}", stderr_of(&down));
    assert!(String::from_utf8_lossy(&down.stdout).contains("3 stopped cleanly"));
    assert!(wait_exit(&mut by_hand, Duration::from_secs(5)).is_some());
    assert!(
        pids.iter()
            .chain([&restarted_pid, &by_hand.id()])
            .all(|p| !pid_alive(*p)),
        "a testnet process survived down"
    );
    assert!(!tn.join("testnet.json").exists());
}

/// `fogmesh testnet dashboard`'s server over a running testnet: it lists the nodes, passes
/// reads on, passes writes on only with its own token (and the node's in their place),
/// keeps store keys as they are (a key with `?` or `/../` stays one key), refuses dot
/// segments and foreign origins, and streams the event stream.
async fn testnet_dashboard_passes_requests_on(tn: &Path, status: &serde_json::Value) {
    let server = fogmesh_node::dashboard::testnet::start(tn, 0)
        .await
        .unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let json = |r: reqwest::Response| async move { r.json::<serde_json::Value>().await.unwrap() };

    let listed = json(http.get(format!("{base}/v1/testnet")).send().await.unwrap()).await;
    assert_eq!(listed["nodes"].as_array().unwrap().len(), 3, "{listed}");
    assert_eq!(listed["nodes"][1]["base"], "/node/1");
    assert_eq!(listed["nodes"][1]["alive"], true);
    let node_1 = json(
        http.get(format!("{base}/node/1/v1/status"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(node_1["peer_id"], status["nodes"][1]["status"]["peer_id"]);
    assert_eq!(
        http.get(format!("{base}/ui/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let put = |key: &str, token: Option<&str>| {
        let request = http
            .put(format!("{base}/node/1/v1/kv/default/{key}"))
            .body(format!("value of {key}"));
        match token {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
    };
    let own = server.token.as_str().to_owned();
    assert_eq!(put("k", None).send().await.unwrap().status(), 401);
    // The nodes' token is not this server's: the page never holds node tokens.
    let node_token = std::fs::read_to_string(tn.join("api-token")).unwrap();
    assert_eq!(
        put("k", Some(node_token.trim()))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let foreign = put("k", Some(&own))
        .header("origin", "http://attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    // Keys that a decoding proxy would turn into another key or route stay one key.
    for (escaped, key) in [
        ("a%3Fb", "a?b"),
        ("x%2F..%2F..%2Ftasks%2F1", "x/../../tasks/1"),
    ] {
        let written = put(escaped, Some(&own)).send().await.unwrap();
        assert_eq!(written.status(), 200, "{key}: {:?}", written.text().await);
        let read = json(
            http.get(format!("{base}/node/1/v1/kv/default/{escaped}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(read["key"], key, "{read}");
        assert_eq!(read["value"], format!("value of {escaped}"));
    }
    // The node's private reads stay private through the server: only its token opens them.
    let messages = format!("{base}/node/1/v1/messages");
    assert_eq!(http.get(&messages).send().await.unwrap().status(), 401);
    let read = http.get(&messages).bearer_auth(&own).send().await.unwrap();
    assert_eq!(read.status(), 200);

    // A dot segment sent as it is (HTTP clients and browsers resolve them first; a raw
    // client need not) is refused, not resolved into another route of the node.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let request = format!(
            "DELETE /node/1/v1/kv/default/x/%2e%2e/../tasks/1 HTTP/1.1\r\nHost: {}\r\n\
             Authorization: Bearer {own}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            server.addr
        );
        raw.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        raw.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }

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
    let chunk = tokio::time::timeout(Duration::from_secs(20), events.chunk())
        .await
        .expect("an event or keep-alive within 20 s")
        .unwrap()
        .unwrap();
    assert!(!chunk.is_empty());
    drop(events);
    server.stop().await;
}

fn testnet_status(dir: &str) -> serde_json::Value {
    let out = fogmesh(&["testnet", "status", "--dir", dir, "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Polls `testnet status --json` until `holds` is true of it (the status is returned).
fn status_until(
    dir: &str,
    what: &str,
    holds: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let status = testnet_status(dir);
        if holds(&status) {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// An in-memory testnet is one host process: status shows every node, kill, restart and
/// partitions go through the host, and `down` stops the host (once) and so every node.
#[test]
fn an_in_memory_testnet_is_one_host_process_with_faults_and_down() {
    let dir = tempfile::tempdir().unwrap();
    let tn = dir.path().join("tn");
    let tn_arg = tn.to_str().unwrap();
    let up = fogmesh(&[
        "testnet",
        "up",
        "--in-memory",
        "--nodes",
        "6",
        "--dir",
        tn_arg,
        "--timeout",
        "90s",
    ]);
    let _down = TestnetGuard(tn_arg.to_owned());
    assert!(up.status.success(), "up failed: {}", stderr_of(&up));

    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tn.join("testnet.json")).unwrap()).unwrap();
    let host = state["host"]["pid"].as_u64().unwrap() as u32;
    assert!(pid_alive(host));
    let entries = state["nodes"].as_array().unwrap();
    assert_eq!(entries.len(), 6);
    assert!(entries
        .iter()
        .all(|n| n["pid"] == host && n["in_memory"] == true));
    // Every node holds the testnet's token, as in a process testnet.
    let token = std::fs::read_to_string(tn.join("api-token")).unwrap();
    let node_token = std::fs::read_to_string(tn.join("node-3").join("api-token")).unwrap();
    assert_eq!(node_token, token);

    let status = testnet_status(tn_arg);
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 6);
    for node in nodes {
        assert_eq!(node["alive"], true, "{node:#}");
        assert_eq!(node["status"]["telemetry_nodes"], 5, "{node:#}");
    }
    let peer_2 = nodes[2]["status"]["peer_id"].clone();

    let killed = fogmesh(&["testnet", "kill", "--node", "2", "--dir", tn_arg]);
    assert!(killed.status.success(), "{}", stderr_of(&killed));
    let status = testnet_status(tn_arg);
    assert_eq!(status["nodes"][2]["alive"], false);
    assert_eq!(status["nodes"][2]["killed"]["signal"], "cut-off");
    assert_eq!(status["nodes"][0]["alive"], true);
    assert!(pid_alive(host), "killing a node leaves its host running");

    let restarted = fogmesh(&[
        "testnet", "restart", "--node", "2", "--dir", tn_arg, "--json",
    ]);
    assert!(restarted.status.success(), "{}", stderr_of(&restarted));
    let report: serde_json::Value = serde_json::from_slice(&restarted.stdout).unwrap();
    assert_eq!(report["pid"], host);
    let status = testnet_status(tn_arg);
    assert_eq!(status["nodes"][2]["alive"], true);
    assert_eq!(status["nodes"][2]["killed"], serde_json::Value::Null);
    assert_eq!(status["nodes"][2]["status"]["peer_id"], peer_2);

    // Nodes 0 and 1 cut off: each keeps only the other; healed, they reach out again.
    let cut = fogmesh(&["testnet", "partition", "--nodes", "0,1", "--dir", tn_arg]);
    assert!(cut.status.success(), "{}", stderr_of(&cut));
    status_until(tn_arg, "0 and 1 see only each other", |s| {
        (0..2).all(|i| s["nodes"][i]["status"]["connected_peers"] == 1)
    });
    let healed = fogmesh(&["testnet", "heal", "--dir", tn_arg]);
    assert!(healed.status.success(), "{}", stderr_of(&healed));
    status_until(tn_arg, "0 and 1 connect beyond each other", |s| {
        (0..2).all(|i| s["nodes"][i]["status"]["connected_peers"].as_u64() > Some(1))
    });

    let down = fogmesh(&["testnet", "down", "--dir", tn_arg]);
    assert!(down.status.success(), "{}", stderr_of(&down));
    assert!(!pid_alive(host), "down leaves the host running");
    assert!(!tn.join("testnet.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_restart_keeps_identity_peers_and_telemetry() {
    let dir = tempfile::tempdir().unwrap();
    let config = empty_config(dir.path());
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    let mut a = spawn_node(&config, &dir_a, &[]);
    let client_a = client_for(&dir_a).await;
    let status_a = client_a.status().await.unwrap();
    let a_addr = format!("{}/p2p/{}", status_a.listen_addrs[0], status_a.peer_id);
    let mut b = spawn_node(&config, &dir_b, &["--bootstrap", &a_addr]);
    let client_b = client_for(&dir_b).await;
    let b_id = client_b.status().await.unwrap().peer_id;
    wait_until("b holds a's telemetry", Duration::from_secs(30), || {
        let c = client_b.clone();
        let a_id = status_a.peer_id.clone();
        async move {
            c.telemetry()
                .await
                .map(|t| t.nodes.iter().any(|n| n.peer_id == a_id))
                .unwrap_or(false)
        }
    })
    .await;
    // Buffered writes reach the disk within the store's 1 s flush interval.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    b.kill().unwrap();
    b.wait().unwrap();

    let mut b2 = spawn_node(&config, &dir_b, &[]);
    let client_b2 = client_for(&dir_b).await;
    let status = client_b2.status().await.unwrap();
    assert_eq!(status.peer_id, b_id, "identity survives SIGKILL");
    let telemetry = client_b2.telemetry().await.unwrap();
    assert!(telemetry
        .nodes
        .iter()
        .any(|n| n.peer_id == status_a.peer_id));
    let peers = client_b2.peers().await.unwrap();
    assert!(peers.peers.iter().any(|p| p.peer_id == status_a.peer_id));

    for child in [&mut a, &mut b2] {
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let exit = wait_exit(child, Duration::from_secs(5)).expect("exits within 5 s");
        assert!(exit.success(), "clean shutdown exits 0, got {exit:?}");
    }
    assert!(
        !dir_a.join("control.json").exists(),
        "control file removed at shutdown"
    );
}

#[test]
fn port_in_use_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = empty_config(dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let out = fogmesh(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        dir.path().join("d").to_str().unwrap(),
        "--listen",
        &listen,
        "--no-mdns",
    ]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains(&listen) && lines[0].contains("in use"),
        "{err}"
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = empty_config(dir.path());
    let config = config.to_str().unwrap();

    // A data dir that is a file.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let out = fogmesh(&[
        "id",
        "--config",
        config,
        "--data-dir",
        file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains("plain-file") && err.contains("not a directory") && !err.contains("os error"),
        "{err}"
    );

    // A corrupt identity is named and left alone.
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("identity.key"), b"broken").unwrap();
    let out = fogmesh(&[
        "id",
        "--config",
        config,
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("identity.key"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(std::fs::read(data.join("identity.key")).unwrap(), b"broken");

    // A bad multiaddr in --bootstrap.
    let out = fogmesh(&["run", "--bootstrap", "/ip4/1.2.3/tcp/1"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("--bootstrap"),
        "{}",
        stderr_of(&out)
    );

    // An unknown key in a config file names the key and the file.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "mdsn = false\n").unwrap();
    let out = fogmesh(&["id", "--config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("mdsn") && err.contains("bad.toml"), "{err}");

    // Asking a node that is not running says so.
    let out = fogmesh(&[
        "status",
        "--config",
        config,
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("no running node"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn id_is_stable_and_config_init_writes_a_loadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = empty_config(dir.path());
    let data = dir.path().join("data");
    let args = [
        "id",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let first = fogmesh(&args);
    let second = fogmesh(&args);
    assert!(first.status.success());
    assert_eq!(first.stdout, second.stdout);
    assert!(String::from_utf8_lossy(&first.stdout).starts_with("12D3KooW"));
    // A FOGMESH_ variable meant for something else is named in a warning, not an error.
    let with_stranger = Command::new(bin())
        .args(args)
        .env("FOGMESH_BIN", "/usr/local/bin/fogmesh")
        .output()
        .unwrap();
    assert!(
        with_stranger.status.success(),
        "{}",
        stderr_of(&with_stranger)
    );
    assert_eq!(with_stranger.stdout, first.stdout);
    let warning = stderr_of(&with_stranger);
    assert!(
        warning.contains("FOGMESH_BIN") && warning.contains("FOGMESH_DATA_DIR"),
        "{warning}"
    );

    let path = dir.path().join("conf/fogmesh.toml");
    let out = fogmesh(&["config", "init", "--path", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let out = fogmesh(&[
        "id",
        "--config",
        path.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(out.stdout, first.stdout);
}

#[test]
fn mesh_init_and_ticket_issue_show_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let config = empty_config(dir.path());
    let out = fogmesh(&["mesh", "init", "--name", "home", "--dir", d]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let again = fogmesh(&["mesh", "init", "--name", "home", "--dir", d]);
    assert!(!again.status.success(), "a root key is never replaced");

    let data = dir.path().join("n");
    let id = fogmesh(&[
        "id",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let peer = String::from_utf8_lossy(&id.stdout).trim().to_owned();
    let key = dir.path().join("home.root.key");
    let ticket = dir.path().join("t.bin");
    let out = fogmesh(&[
        "ticket",
        "issue",
        "--mesh-key",
        key.to_str().unwrap(),
        "--peer",
        &peer,
        "--roles",
        "worker,gateway",
        "--valid",
        "30d",
        "--out",
        ticket.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let shown = fogmesh(&["ticket", "show", ticket.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains(&peer) && text.contains("worker, gateway"),
        "{text}"
    );

    let out = fogmesh(&[
        "ticket",
        "revoke",
        "--mesh-key",
        key.to_str().unwrap(),
        "--ticket",
        ticket.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "revocation printed as hex"
    );

    let bad = fogmesh(&[
        "ticket",
        "issue",
        "--mesh-key",
        key.to_str().unwrap(),
        "--peer",
        &peer,
        "--roles",
        "mayor",
    ]);
    assert!(!bad.status.success());
    assert!(stderr_of(&bad).contains("mayor"));
    let garbage = fogmesh(&[
        "ticket",
        "show",
        dir.path().join("home.mesh.json").to_str().unwrap(),
    ]);
    assert!(!garbage.status.success());
    assert!(stderr_of(&garbage).contains("malformed"));

    // A node given someone else's ticket refuses to start, and says why.
    let other = dir.path().join("other");
    let out = fogmesh(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        other.to_str().unwrap(),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--no-mdns",
        "--mesh",
        dir.path().join("home.mesh.json").to_str().unwrap(),
        "--ticket",
        ticket.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains("issued to another peer") && err.contains("t.bin"),
        "{err}"
    );
    // A mesh without a ticket is a configuration error.
    let out = fogmesh(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--mesh",
        dir.path().join("home.mesh.json").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("ticket"), "{}", stderr_of(&out));
}

#[test]
fn store_check_finds_damage_and_repair_keeps_what_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let config = empty_config(dir.path());
    let config = config.to_str().unwrap();
    let data = dir.path().join("data");
    let store_dir = data.join("store");
    {
        let store = fogmesh_store::Store::open(&store_dir, &fogmesh_store::StoreOptions::default())
            .unwrap();
        let table = store.table::<Vec<u8>>("revocations").unwrap();
        for i in 0..10u8 {
            table.put_durable(&format!("r{i}"), &vec![i; 16]).unwrap();
        }
    }
    let check = |extra: &[&str]| {
        let mut args = vec!["store", "check", "--config", config, "--data-dir"];
        args.push(data.to_str().unwrap());
        args.extend_from_slice(extra);
        fogmesh(&args)
    };
    let out = check(&[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("healthy"));

    std::fs::OpenOptions::new()
        .write(true)
        .open(store_dir.join("db"))
        .unwrap()
        .set_len(0)
        .unwrap();
    let out = check(&[]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // Depending on where the damage is, sled refuses the log or opens an older one; either
    // way the check must call it damaged.
    assert!(stdout.contains("DAMAGED"), "{stdout}");
    assert!(stderr_of(&out).contains("--repair"), "{}", stderr_of(&out));

    let out = check(&["--repair"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains("lost: ") && stdout.contains("store.damaged-"),
        "{stdout}"
    );
    let out = check(&[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
}

#[test]
fn an_offline_radio_testnet_of_12_processes_converges_and_opens_only_loopback_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let tn = dir.path().join("radio");
    let tn_arg = tn.to_str().unwrap();
    let up = fogmesh(&[
        "testnet",
        "up",
        "--nodes",
        "12",
        "--radio",
        "line",
        "--offline",
        "--dir",
        tn_arg,
        "--timeout",
        "120s",
    ]);
    let _down = TestnetGuard(tn_arg.to_owned());
    // `up` succeeds only once every node holds fresh telemetry from every other, here
    // across up to 11 radio hops with no internet transport anywhere.
    assert!(up.status.success(), "up failed: {}", stderr_of(&up));
    let status = fogmesh(&["testnet", "status", "--dir", tn_arg, "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 12);
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(node["status"]["telemetry_nodes"], 11, "node {i}");
        let expected: Vec<usize> = [i.checked_sub(1), (i < 11).then_some(i + 1)]
            .into_iter()
            .flatten()
            .collect();
        let heard: Vec<usize> = node["radio_neighbours"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(heard, expected, "node {i} hears its line neighbours only");
        // No internet socket: the control API and the simulated radio, both on loopback.
        let pid = node["pid"].as_u64().unwrap() as u32;
        for (proto, local) in inet_sockets_of(pid) {
            assert!(local.starts_with("0100007F:"), "node {i}: {proto} {local}");
        }
    }
    // A partition, then a message that waits for the heal (to node 6: six hops, within the
    // relay's TTL of 7; node 11 is beyond it).
    let radio = |args: &[&str]| {
        let out = fogmesh(&[&["testnet", "radio", "--dir", tn_arg], args].concat());
        assert!(out.status.success(), "{}", stderr_of(&out));
    };
    radio(&["partition", "--nodes", "0,1,2"]);
    let last = nodes[6]["status"]["peer_id"].as_str().unwrap().to_owned();
    let first_dir = tn.join("node-0");
    let sent = fogmesh(&[
        "send",
        "--data-dir",
        first_dir.to_str().unwrap(),
        "--json",
        &last,
        "held",
        "for",
        "later",
    ]);
    assert!(sent.status.success(), "{}", stderr_of(&sent));
    radio(&["heal"]);
    let waited = fogmesh(&[
        "send",
        "--data-dir",
        first_dir.to_str().unwrap(),
        "--wait",
        "60s",
        &last,
        "after",
        "the",
        "heal",
    ]);
    assert!(waited.status.success(), "{}", stderr_of(&waited));
    let inbox = fogmesh(&[
        "inbox",
        "--data-dir",
        tn.join("node-6").to_str().unwrap(),
        "--json",
    ]);
    let raw = String::from_utf8_lossy(&inbox.stdout).into_owned();
    let inbox: serde_json::Value = serde_json::from_slice(&inbox.stdout).unwrap();
    let texts: Vec<&str> = inbox["inbox"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert!(texts.contains(&"held for later"), "{raw}");
    assert!(texts.contains(&"after the heal"), "{texts:?}");
}

/// Every key of namespace `ns` under `prefix` that a node holds (paging through the list).
async fn kv_keys(client: &ControlClient, ns: &str, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut after = None;
    loop {
        let query = fogmesh_node::kv::api::KvListQuery {
            prefix: prefix.into(),
            after: after.clone(),
            limit: Some(1000),
            deleted: true,
        };
        let page = client.kv_list(ns, &query).await.unwrap();
        if page.is_empty() {
            return keys;
        }
        after = page.last().map(|k| k.key.clone());
        keys.extend(page.into_iter().map(|k| k.key));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_writes_survive_sigkill_and_an_offline_node_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = empty_config(dir.path());
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    let mut a = spawn_node(&config, &dir_a, &[]);
    let client_a = client_for(&dir_a).await;
    let status_a = client_a.status().await.unwrap();
    let a_addr = format!("{}/p2p/{}", status_a.listen_addrs[0], status_a.peer_id);

    // The CLI, as a person uses it: a key with a slash, a value back on stdout, conflicts.
    let data_dir_a = dir_a.to_str().unwrap();
    let put = fogmesh(&[
        "kv",
        "put",
        "greeting/en",
        "hello",
        "--data-dir",
        data_dir_a,
    ]);
    assert!(put.status.success(), "{}", stderr_of(&put));
    let get = fogmesh(&["kv", "get", "greeting/en", "--data-dir", data_dir_a]);
    assert!(get.status.success(), "{}", stderr_of(&get));
    assert_eq!(get.stdout, b"hello");
    let again = fogmesh(&["kv", "put", "greeting/en", "hi", "--data-dir", data_dir_a]);
    assert!(again.status.success());
    let conflicts = fogmesh(&[
        "kv",
        "get",
        "greeting/en",
        "--conflicts",
        "--data-dir",
        data_dir_a,
    ]);
    let text = String::from_utf8_lossy(&conflicts.stdout);
    assert!(
        text.contains("\"hi\"") && text.contains("overwrote    \"hello\""),
        "{text}"
    );
    let missing = fogmesh(&["kv", "get", "nothing", "--data-dir", data_dir_a]);
    assert!(!missing.status.success());
    assert!(stderr_of(&missing).contains("no key default/nothing"));

    // B meets A, then goes offline.
    let mut b = spawn_node(&config, &dir_b, &["--bootstrap", &a_addr]);
    let client_b = client_for(&dir_b).await;
    wait_until("b connects to a", Duration::from_secs(30), || {
        let c = client_b.clone();
        async move { c.status().await.is_ok_and(|s| s.connected_peers > 0) }
    })
    .await;
    kill(Pid::from_raw(b.id() as i32), Signal::SIGTERM).unwrap();
    wait_exit(&mut b, Duration::from_secs(10)).expect("B stops");

    // A burst of writes on A, SIGKILLed in the middle of it.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let client = client_a.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                for i in 0..10_000 {
                    let key = format!("burst/{w}/{i:05}");
                    let value = Some(format!("value {w} {i}").into_bytes());
                    if client.kv_write("default", &key, value).await.is_err() {
                        return;
                    }
                    acked.lock().unwrap().push(key);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.kill().unwrap();
    a.wait().unwrap();
    for writer in writers {
        let _ = tokio::time::timeout(Duration::from_secs(20), writer).await;
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "the burst wrote {} keys", acked.len());
    eprintln!("{} writes acknowledged before SIGKILL", acked.len());

    let mut a = spawn_node(&config, &dir_a, &[]);
    let client_a = client_for(&dir_a).await;
    let held: std::collections::HashSet<String> = kv_keys(&client_a, "default", "burst/")
        .await
        .into_iter()
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|k| !held.contains(*k)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );

    // B comes back and catches up on everything A holds.
    let status_a = client_a.status().await.unwrap();
    let a_addr = format!("{}/p2p/{}", status_a.listen_addrs[0], status_a.peer_id);
    let mut b = spawn_node(&config, &dir_b, &["--bootstrap", &a_addr]);
    let client_b = client_for(&dir_b).await;
    let expected = held.len();
    wait_until(
        &format!("B catches up on {expected} keys"),
        Duration::from_secs(60),
        || {
            let c = client_b.clone();
            async move { kv_keys(&c, "default", "burst/").await.len() == expected }
        },
    )
    .await;
    assert_eq!(
        client_b
            .kv_get("default", "greeting/en")
            .await
            .unwrap()
            .unwrap()
            .winner
            .value
            .as_deref(),
        Some("hi")
    );

    for child in [&mut a, &mut b] {
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        wait_exit(child, Duration::from_secs(10)).expect("exits");
    }
}
