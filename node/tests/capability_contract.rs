#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A capability written against the public contract only (docs/architecture.md, "Adding a
//! capability"): the greeting capability greets every peer it connects to on its own
//! request-response protocol, answers greetings, keeps both, shows them in a view and on
//! the control API, and tells the event stream. It is registered with one line (here the
//! test network's `NodeSpec::capability`; in the node, `capabilities::ALL`), and nothing in
//! the runtime knows its name.

mod common;

use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use fogmesh_node::memnet::NodeSpec;
use fogmesh_node::runtime::capability::{
    Capability, Effect, InboundRequest, Notice, Outbox, Protocol, Response, ResponseFraming,
};
use fogmesh_node::runtime::events::EventKind;
use fogmesh_node::runtime::handle::{NodeHandle, ViewCell};
use fogmesh_node::runtime::registration::{Registered, Setup, SetupError};
use serde::{Deserialize, Serialize};

const GREETING: &str = "/example/greeting/1";

const SPEC: Protocol = Protocol {
    name: GREETING,
    max_request: 256,
    response: ResponseFraming::Prefixed(256),
    max_streams: 4,
    timeout: Duration::from_secs(10),
};

/// What the greeting capability shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Greetings {
    /// Greetings other peers sent us.
    received: Vec<String>,
    /// Answers to ours.
    answered: Vec<String>,
}

/// Told to the event stream for every answer to our greeting.
#[derive(Debug, Clone, Serialize)]
struct Greeted {
    peer: String,
    answer: String,
}

impl EventKind for Greeted {
    const KIND: &'static str = "greeted";
}

struct Greeter {
    view: ViewCell<Greetings>,
    greetings: Greetings,
}

impl Capability for Greeter {
    fn name(&self) -> &'static str {
        "greeting"
    }

    fn protocols(&self) -> Vec<Protocol> {
        vec![SPEC]
    }

    fn on_notice(&mut self, _now_ms: u64, notice: &Notice, out: &mut Outbox) {
        if let Notice::PeerConnected { peer, .. } = notice {
            out.push(Effect::Send {
                peer: *peer,
                protocol: GREETING,
                data: b"hello".to_vec(),
                token: 1,
            });
        }
    }

    fn on_request(&mut self, _now_ms: u64, request: InboundRequest, out: &mut Outbox) {
        self.greetings.received.push(format!(
            "{} from {}",
            String::from_utf8_lossy(&request.data),
            request.peer
        ));
        self.view.set(self.greetings.clone());
        out.respond(request.id, b"welcome".to_vec());
    }

    fn on_response(&mut self, _now_ms: u64, response: Response, out: &mut Outbox) {
        let Ok(answer) = response.result else {
            return;
        };
        let answer = String::from_utf8_lossy(&answer).into_owned();
        self.greetings
            .answered
            .push(format!("{answer} from {}", response.peer));
        self.view.set(self.greetings.clone());
        out.event(Greeted {
            peer: response.peer.to_string(),
            answer,
        });
    }
}

/// The greeting capability's registration: its state machine, its view and its route.
fn register(setup: &mut Setup<'_>) -> Result<Registered, SetupError> {
    let view = setup.views.add(Greetings::default());
    Ok(Registered {
        capability: Box::new(Greeter {
            view,
            greetings: Greetings::default(),
        }),
        routes: Router::new().route("/v1/greetings", get(greetings)),
    })
}

async fn greetings(State(node): State<NodeHandle>) -> Json<Greetings> {
    Json(greetings_of(&node))
}

fn greetings_of(node: &NodeHandle) -> Greetings {
    node.view::<Greetings>()
        .map(|cell| cell.get())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capability_from_outside_the_node_greets_answers_and_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = common::memnet(dir.path(), Duration::from_secs(1))
        .nodes(0)
        .start()
        .await
        .unwrap();
    net.add_node(NodeSpec::new().capability(register))
        .await
        .unwrap();
    net.add_node(NodeSpec::new().bootstrap([0]).capability(register))
        .await
        .unwrap();
    let greeted = |net: &fogmesh_node::memnet::MemNet| {
        (0..2).all(|i| {
            let g = greetings_of(net.handle(i).unwrap());
            g.received.len() == 1 && g.answered.len() == 1
        })
    };
    net.wait_for(greeted, Duration::from_secs(30))
        .await
        .expect("both nodes greeted and were answered");
    let first = greetings_of(net.handle(0).unwrap());
    let other = net.peer_id(1).unwrap().to_string();
    assert_eq!(first.received, vec![format!("hello from {other}")]);
    assert_eq!(first.answered, vec![format!("welcome from {other}")]);

    // Its route is on the node's control API beside the built-in ones.
    let addr = net.node(0).unwrap().control_addr;
    let shown: Greetings = reqwest::get(format!("http://{addr}/v1/greetings"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown, first);
    // And the runtime calls into it by type, like any built-in capability.
    let name = net
        .handle(0)
        .unwrap()
        .call(|g: &mut Greeter, _, _| g.name())
        .await
        .unwrap();
    assert_eq!(name, "greeting");
    net.shutdown().await;
}
