//! One request-response behaviour for every capability's protocols, carrying the caller's
//! token (lighthouse's RPC does this), so the driver keeps no request map per capability.
//!
//! Each protocol a capability declares ([`Protocol`]) is a libp2p request-response behaviour
//! of byte bodies with its own bounds (request size, response framing, streams per
//! connection, timeout); their connection handlers run side by side in one
//! [`MultiHandler`]. Outbound: [`Rpc::send`] remembers which capability asked and its token,
//! and the answer (or the failure) comes back as [`RpcEvent::Response`] for that capability.
//! Inbound: a request is handed to its protocol's capability as
//! [`RpcEvent::Request`] with an [`InboundId`]; the capability answers with
//! [`Rpc::respond`], now or later. Unanswered requests are forgotten when their stream
//! times out or closes, so the map of waiting answers is bounded by the protocols' streams
//! per connection times the connections.

use std::collections::{HashMap, VecDeque};
use std::task::{Context, Poll};

use fogmesh_wire::framing::BytesCodec;
use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::request_response::{
    self, InboundRequestId, Message, OutboundRequestId, ProtocolSupport, ResponseChannel,
};
use libp2p::swarm::handler::multi::MultiHandler;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, StreamProtocol};

use crate::runtime::capability::{InboundId, InboundRequest, Protocol, Response, Token};

type Inner = request_response::Behaviour<BytesCodec>;
type InnerEvent = request_response::Event<Vec<u8>, Vec<u8>>;

/// What the RPC behaviour tells the driver, by the capability concerned (its index).
#[derive(Debug)]
pub enum RpcEvent {
    Request {
        owner: usize,
        request: InboundRequest,
    },
    Response {
        owner: usize,
        response: Response,
    },
}

/// One protocol: its behaviour and the capability that speaks it.
struct Slot {
    protocol: Protocol,
    owner: usize,
    inner: Inner,
}

/// See the module docs.
pub struct Rpc {
    slots: Vec<Slot>,
    /// Requests sent: which slot, which request → which capability and token.
    outbound: HashMap<(usize, OutboundRequestId), (usize, Token)>,
    /// Requests received and not answered yet.
    inbound: HashMap<InboundId, (usize, InboundRequestId, ResponseChannel<Vec<u8>>)>,
    inbound_ids: HashMap<(usize, InboundRequestId), InboundId>,
    next_inbound: u64,
    events: VecDeque<RpcEvent>,
}

impl std::fmt::Debug for Rpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rpc")
            .field(
                "protocols",
                &self
                    .slots
                    .iter()
                    .map(|s| s.protocol.name)
                    .collect::<Vec<_>>(),
            )
            .field("outbound", &self.outbound.len())
            .field("inbound", &self.inbound.len())
            .finish()
    }
}

impl Rpc {
    /// The behaviour for `protocols`, each with the index of the capability that speaks it.
    pub fn new(protocols: impl IntoIterator<Item = (usize, Protocol)>) -> Self {
        let slots = protocols
            .into_iter()
            .map(|(owner, protocol)| Slot {
                inner: request_response::Behaviour::with_codec(
                    BytesCodec {
                        max_request: protocol.max_request,
                        response: protocol.response,
                    },
                    [(StreamProtocol::new(protocol.name), ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(protocol.timeout)
                        .with_max_concurrent_streams(protocol.max_streams),
                ),
                protocol,
                owner,
            })
            .collect();
        Self {
            slots,
            outbound: HashMap::new(),
            inbound: HashMap::new(),
            inbound_ids: HashMap::new(),
            next_inbound: 0,
            events: VecDeque::new(),
        }
    }

    /// Sends `data` on `protocol` to `peer`; the answer comes back for `(owner, token)`.
    /// A protocol nobody declared is answered at once with an error.
    pub fn send(
        &mut self,
        protocol: &str,
        peer: PeerId,
        data: Vec<u8>,
        owner: usize,
        token: Token,
    ) {
        match self.slots.iter().position(|s| s.protocol.name == protocol) {
            Some(slot) => {
                let request = self.slots[slot].inner.send_request(&peer, data);
                self.outbound.insert((slot, request), (owner, token));
            }
            None => self.events.push_back(RpcEvent::Response {
                owner,
                response: Response {
                    peer,
                    token,
                    result: Err(format!("no protocol {protocol} is registered")),
                },
            }),
        }
    }

    /// Answers an inbound request; false if it is no longer waiting (timed out, or the
    /// connection closed).
    pub fn respond(&mut self, id: InboundId, data: Vec<u8>) -> bool {
        let Some((slot, request, channel)) = self.inbound.remove(&id) else {
            return false;
        };
        self.inbound_ids.remove(&(slot, request));
        self.slots[slot].inner.send_response(channel, data).is_ok()
    }

    /// Requests received and not answered yet.
    pub fn waiting_answers(&self) -> usize {
        self.inbound.len()
    }

    fn on_inner_event(&mut self, slot: usize, event: InnerEvent) {
        let owner = self.slots[slot].owner;
        let protocol = self.slots[slot].protocol.name;
        match event {
            InnerEvent::Message {
                peer,
                message:
                    Message::Request {
                        request_id,
                        request,
                        channel,
                    },
                ..
            } => {
                self.next_inbound += 1;
                let id = InboundId(self.next_inbound);
                self.inbound.insert(id, (slot, request_id, channel));
                self.inbound_ids.insert((slot, request_id), id);
                self.events.push_back(RpcEvent::Request {
                    owner,
                    request: InboundRequest {
                        id,
                        peer,
                        protocol,
                        data: request,
                    },
                });
            }
            InnerEvent::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some((owner, token)) = self.outbound.remove(&(slot, request_id)) {
                    self.events.push_back(RpcEvent::Response {
                        owner,
                        response: Response {
                            peer,
                            token,
                            result: Ok(response),
                        },
                    });
                }
            }
            InnerEvent::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some((owner, token)) = self.outbound.remove(&(slot, request_id)) {
                    self.events.push_back(RpcEvent::Response {
                        owner,
                        response: Response {
                            peer,
                            token,
                            result: Err(error.to_string()),
                        },
                    });
                }
            }
            InnerEvent::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(peer_id = %peer, protocol, %error, "inbound request failed");
                if let Some(id) = self.inbound_ids.remove(&(slot, request_id)) {
                    self.inbound.remove(&id);
                }
            }
            InnerEvent::ResponseSent { .. } => {}
        }
    }
}

impl NetworkBehaviour for Rpc {
    type ConnectionHandler = MultiHandler<usize, THandler<Inner>>;
    type ToSwarm = RpcEvent;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        for slot in &mut self.slots {
            slot.inner
                .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)?;
        }
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let mut handlers = Vec::with_capacity(self.slots.len());
        for (i, slot) in self.slots.iter_mut().enumerate() {
            handlers.push((
                i,
                slot.inner.handle_established_inbound_connection(
                    connection_id,
                    peer,
                    local_addr,
                    remote_addr,
                )?,
            ));
        }
        MultiHandler::try_from_iter(handlers).map_err(ConnectionDenied::new)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        let mut out = Vec::new();
        for slot in &mut self.slots {
            for addr in slot.inner.handle_pending_outbound_connection(
                connection_id,
                maybe_peer,
                addresses,
                effective_role,
            )? {
                if !out.contains(&addr) {
                    out.push(addr);
                }
            }
        }
        Ok(out)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let mut handlers = Vec::with_capacity(self.slots.len());
        for (i, slot) in self.slots.iter_mut().enumerate() {
            handlers.push((
                i,
                slot.inner.handle_established_outbound_connection(
                    connection_id,
                    peer,
                    addr,
                    role_override,
                    port_use,
                )?,
            ));
        }
        MultiHandler::try_from_iter(handlers).map_err(ConnectionDenied::new)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        for slot in &mut self.slots {
            slot.inner.on_swarm_event(event);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection_id: ConnectionId,
        (slot, event): THandlerOutEvent<Self>,
    ) {
        if let Some(slot) = self.slots.get_mut(slot) {
            slot.inner
                .on_connection_handler_event(peer, connection_id, event);
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Poll::Ready(ToSwarm::GenerateEvent(event));
            }
            let mut progressed = false;
            for i in 0..self.slots.len() {
                let Poll::Ready(action) = self.slots[i].inner.poll(cx) else {
                    continue;
                };
                progressed = true;
                match action {
                    ToSwarm::GenerateEvent(event) => self.on_inner_event(i, event),
                    // Dials, handler notifications: passed on, addressed to this protocol's
                    // handler. (`GenerateEvent`, the only case `map_out` maps, is above.)
                    other => {
                        return Poll::Ready(
                            other
                                .map_in(|e| (i, e))
                                .map_out(|_| unreachable!("events are handled above")),
                        )
                    }
                }
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }
}
