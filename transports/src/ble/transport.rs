//! A libp2p [`Transport`] over BLE links: each link becomes a [`BleStream`], on which the
//! node puts the same secure channel and yamux as on TCP ([`crate::secure_transport`]).
//!
//! Addresses: libp2p's multiaddr has no Bluetooth protocol, so a BLE address borrows the
//! `unix` slot with a name no Unix socket uses: `/unix/ble-<device id, 16 hex digits>`,
//! followed by `/p2p/<PeerId>` when dialing (XK needs the responder's identity). No other
//! transport in the stack accepts `/unix`, so these never reach TCP or DNS. Listening takes
//! `/unix/ble` (this device's radio) or the device's own address, and reports the latter.
//!
//! Duplicate links: the driver allows one link per pair of devices, so when two nodes dial
//! each other at once, one `connect` fails with `AlreadyLinked` and both use the other link.
//! An inbound BLE link has no IP address, so the secure channel's per-address rate limit
//! does not apply to it; a device's link limit bounds what one neighbour can hold.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures::future::{BoxFuture, Ready};
use futures::FutureExt;
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, Transport};
use tokio::sync::mpsc;

use super::arq::ArqConfig;
use super::driver::{BleDriver, BleError, BleLink, DeviceId};
use super::stream::BleStream;

pub const PREFIX: &str = "ble-";

/// The BLE address of `device`.
pub fn device_addr(device: DeviceId) -> Multiaddr {
    Multiaddr::empty().with(Protocol::Unix(format!("{PREFIX}{device}").into()))
}

/// The device an address names, if it is a BLE address (a trailing `/p2p` is allowed).
pub fn device_of(addr: &Multiaddr) -> Option<DeviceId> {
    let mut parts = addr.iter();
    let Some(Protocol::Unix(name)) = parts.next() else {
        return None;
    };
    match parts.next() {
        None | Some(Protocol::P2p(_)) => {}
        Some(_) => return None,
    }
    DeviceId::parse(name.strip_prefix(PREFIX)?)
}

fn is_any_ble(addr: &Multiaddr) -> bool {
    let mut parts = addr.iter();
    matches!(
        (parts.next(), parts.next()),
        (Some(Protocol::Unix(name)), None) if name == "ble"
    )
}

struct Listener {
    id: ListenerId,
    links: mpsc::Receiver<BleLink>,
}

/// The BLE transport over any [`BleDriver`].
pub struct BleTransport<D> {
    driver: Arc<D>,
    /// This device's address, reported by every listener event.
    local_addr: Multiaddr,
    config: ArqConfig,
    listener: Option<Listener>,
    events: VecDeque<TransportEvent<Ready<Result<BleStream, BleError>>, BleError>>,
    waker: Option<Waker>,
}

impl<D> std::fmt::Debug for BleTransport<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BleTransport")
            .field("listening", &self.listener.is_some())
            .finish()
    }
}

impl<D: BleDriver> BleTransport<D> {
    pub fn new(driver: D, config: ArqConfig) -> Self {
        Self {
            local_addr: device_addr(driver.local()),
            driver: Arc::new(driver),
            config,
            listener: None,
            events: VecDeque::new(),
            waker: None,
        }
    }

    /// This device's BLE address.
    pub fn local_addr(&self) -> Multiaddr {
        self.local_addr.clone()
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

impl<D: BleDriver> Transport for BleTransport<D> {
    type Output = BleStream;
    type Error = BleError;
    type ListenerUpgrade = Ready<Result<BleStream, BleError>>;
    type Dial = BoxFuture<'static, Result<BleStream, BleError>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        let own = self.local_addr();
        if !(is_any_ble(&addr) || addr == own) {
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        if self.listener.is_some() {
            return Err(TransportError::Other(BleError::AlreadyListening));
        }
        let links = self.driver.listen().map_err(TransportError::Other)?;
        self.listener = Some(Listener { id, links });
        self.events.push_back(TransportEvent::NewAddress {
            listener_id: id,
            listen_addr: own,
        });
        self.wake();
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        if self.listener.as_ref().is_some_and(|l| l.id == id) {
            self.listener = None;
            self.events.push_back(TransportEvent::ListenerClosed {
                listener_id: id,
                reason: Ok(()),
            });
            self.wake();
            true
        } else {
            false
        }
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let Some(device) = device_of(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let connect = self.driver.connect(device);
        let config = self.config.clone();
        Ok(async move { Ok(BleStream::spawn(connect.await?, config)) }.boxed())
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let this = self.get_mut();
        if let Some(event) = this.events.pop_front() {
            return Poll::Ready(event);
        }
        if let Some(listener) = this.listener.as_mut() {
            match listener.links.poll_recv(cx) {
                Poll::Ready(Some(link)) => {
                    let send_back_addr = device_addr(link.peer);
                    let stream = BleStream::spawn(link, this.config.clone());
                    return Poll::Ready(TransportEvent::Incoming {
                        listener_id: listener.id,
                        upgrade: futures::future::ready(Ok(stream)),
                        local_addr: this.local_addr.clone(),
                        send_back_addr,
                    });
                }
                Poll::Ready(None) => {
                    let id = listener.id;
                    this.listener = None;
                    return Poll::Ready(TransportEvent::ListenerClosed {
                        listener_id: id,
                        reason: Err(BleError::RadioGone),
                    });
                }
                Poll::Pending => {}
            }
        }
        this.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_other_addresses_are_not_ble() {
        let device = DeviceId([1, 2, 3, 4, 5, 6, 7, 0xab]);
        let addr = device_addr(device);
        assert_eq!(addr.to_string(), "/unix/ble-01020304050607ab");
        assert_eq!(device_of(&addr), Some(device));
        let parsed: Multiaddr = "/unix/ble-01020304050607ab".parse().unwrap();
        assert_eq!(device_of(&parsed), Some(device));
        let peer = libp2p::PeerId::random();
        assert_eq!(
            device_of(&addr.clone().with(Protocol::P2p(peer))),
            Some(device)
        );
        for other in [
            "/unix/ble",
            "/unix/ble-xyz",
            "/unix/tmp-sock",
            "/ip4/127.0.0.1/tcp/1",
            "/memory/5",
        ] {
            assert_eq!(device_of(&other.parse().unwrap()), None, "{other}");
        }
        assert!(is_any_ble(&"/unix/ble".parse().unwrap()));
    }
}
