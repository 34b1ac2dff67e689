//! The peripheral side (bluer): the GATT server and advertisement, hellos from centrals,
//! their writes routed to links, and notifications tagged with their link.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Weak};

use futures::FutureExt;
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::super::driver::{BleError, BleLink, DeviceId, ACCEPT_QUEUE};
use super::super::gatt::{self, Answer};

use super::*;

/// Registers the GATT service and the advertisement.
pub(super) async fn serve(
    local: DeviceId,
    peer: &PeerId,
) -> Result<(PeripheralHandles, ServerInputs), BleError> {
    use bluer::gatt::local::{
        Application, Characteristic as LocalCharacteristic, CharacteristicNotify,
        CharacteristicNotifyMethod, CharacteristicRead, CharacteristicWrite,
        CharacteristicWriteMethod, Service,
    };
    let session = bluer::Session::new()
        .await
        .map_err(|e| adapter_error("cannot reach BlueZ (is bluetoothd running?)", e))?;
    let adapter = session
        .default_adapter()
        .await
        .map_err(|e| adapter_error("no Bluetooth adapter found", e))?;
    adapter
        .set_powered(true)
        .await
        .map_err(|e| adapter_error("cannot power the adapter on", e))?;

    let identity = gatt::identity(peer);
    let (writes_tx, writes) = mpsc::channel(WRITE_QUEUE);
    let (notifiers_tx, notifiers) = mpsc::channel(4);
    let app = Application {
        services: vec![Service {
            uuid: Uuid::from_u128(gatt::SERVICE_UUID),
            primary: true,
            characteristics: vec![
                LocalCharacteristic {
                    uuid: Uuid::from_u128(gatt::RX_UUID),
                    write: Some(CharacteristicWrite {
                        write_without_response: true,
                        method: CharacteristicWriteMethod::Fun(Box::new(move |value, request| {
                            // A full queue drops the datagram: the link may lose some.
                            let _ =
                                writes_tx.try_send((request.device_address, request.mtu, value));
                            async { Ok(()) }.boxed()
                        })),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                LocalCharacteristic {
                    uuid: Uuid::from_u128(gatt::TX_UUID),
                    notify: Some(CharacteristicNotify {
                        notify: true,
                        method: CharacteristicNotifyMethod::Fun(Box::new(move |notifier| {
                            let notifiers_tx = notifiers_tx.clone();
                            async move {
                                let _ = notifiers_tx.send(notifier).await;
                            }
                            .boxed()
                        })),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                LocalCharacteristic {
                    uuid: Uuid::from_u128(gatt::IDENTITY_UUID),
                    read: Some(CharacteristicRead {
                        read: true,
                        fun: Box::new(move |request| {
                            // A long read comes in pieces, each from an offset.
                            let piece = identity
                                .get(usize::from(request.offset)..)
                                .map(<[u8]>::to_vec)
                                .unwrap_or_default();
                            async move { Ok(piece) }.boxed()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    let app = adapter
        .serve_gatt_application(app)
        .await
        .map_err(|e| adapter_error("cannot register the GATT service", e))?;
    let advert = bluer::adv::Advertisement {
        advertisement_type: bluer::adv::Type::Peripheral,
        service_data: BTreeMap::from([(Uuid::from_u128(gatt::SERVICE_UUID), gatt::advert(local))]),
        service_uuids: BTreeSet::new(),
        discoverable: Some(true),
        ..Default::default()
    };
    let advert = adapter
        .advertise(advert)
        .await
        .map_err(|e| adapter_error("cannot advertise", e))?;
    Ok((
        PeripheralHandles {
            adapter,
            _session: session,
            _app: app,
            _advert: advert,
        },
        ServerInputs { writes, notifiers },
    ))
}

/// A link a central opened to us, as the peripheral task routes it.
pub(super) struct Inbound {
    tag: u8,
    /// Datagrams to the link's reader; dropping it ends the link for its owner.
    deliver: mpsc::Sender<Vec<u8>>,
    /// Dropping it stops the link's pump.
    _stop: oneshot::Sender<()>,
    /// Held here, not by the pump, so a central's new hello finds its slot free at once.
    _reservation: Reservation,
}

/// Peripheral side: routes every central's writes to its link, opens links on hellos, and
/// sends all links' notifications through the one notification session.
pub(super) async fn serve_links(inner: Weak<Inner>, inputs: ServerInputs) {
    let ServerInputs {
        mut writes,
        notifiers,
    } = inputs;
    let (air_tx, air_rx) = mpsc::channel::<Vec<u8>>(AIR_QUEUE);
    tokio::spawn(notify(air_rx, notifiers));
    let (ended_tx, mut ended_rx) = mpsc::channel::<(bluer::Address, u8)>(ACCEPT_QUEUE);
    let mut links: HashMap<bluer::Address, Inbound> = HashMap::new();
    let mut next_tag: u8 = 0;
    loop {
        tokio::select! {
            write = writes.recv() => {
                let Some((address, att_mtu, value)) = write else { return };
                let hello = gatt::parse_hello(&value);
                match (hello, links.get(&address)) {
                    (None, Some(link)) => {
                        // Full: dropped, as the air would.
                        let _ = link.deliver.try_send(value);
                    }
                    (Some(central), _) => {
                        // A central saying hello again starts over.
                        links.remove(&address);
                        let Some(radio) = inner.upgrade() else { return };
                        // Link tags skip the control tag, which answers use.
                        let tag = loop {
                            next_tag = next_tag.wrapping_add(1);
                            if next_tag != gatt::CONTROL_TAG
                                && links.values().all(|l| l.tag != next_tag)
                            {
                                break next_tag;
                            }
                        };
                        let hello = Hello { address, central, att_mtu, tag };
                        if let Some(link) = open_inbound(&radio, hello, &air_tx, &ended_tx).await {
                            links.insert(address, link);
                        }
                    }
                    (None, None) => {} // not a link (yet): ignored
                }
            }
            ended = ended_rx.recv() => {
                let Some((address, tag)) = ended else { return };
                if links.get(&address).is_some_and(|l| l.tag == tag) {
                    links.remove(&address);
                }
            }
        }
    }
}

/// A central's hello, as the peripheral task received it.
pub(super) struct Hello {
    address: bluer::Address,
    central: DeviceId,
    att_mtu: u16,
    tag: u8,
}

/// Answers a hello, and opens the link if it is accepted. The answer goes out before the
/// link's first datagram can.
pub(super) async fn open_inbound(
    radio: &Arc<Inner>,
    hello: Hello,
    air: &mpsc::Sender<Vec<u8>>,
    ended: &mpsc::Sender<(bluer::Address, u8)>,
) -> Option<Inbound> {
    let Hello {
        address,
        central,
        att_mtu,
        tag,
    } = hello;
    let answer = |answer: Answer| gatt::tagged(gatt::CONTROL_TAG, &answer.encode(central));
    let accepted = accept_inbound(radio, central, att_mtu);
    let (reservation, permit) = match accepted {
        Ok(accepted) => accepted,
        Err(refusal) => {
            let _ = air.send(answer(refusal)).await;
            return None;
        }
    };
    if air
        .send(answer(Answer::Accepted { att_mtu, tag }))
        .await
        .is_err()
    {
        return None;
    }
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(LINK_QUEUE);
    let (deliver, in_rx) = mpsc::channel(LINK_QUEUE);
    let link = BleLink {
        peer: central,
        max_datagram: gatt::max_datagram(att_mtu.into()),
        outbound: false,
        tx: out_tx,
        rx: in_rx,
    };
    permit.send(link);
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(run_inbound_link(
        Arc::downgrade(radio),
        address,
        tag,
        out_rx,
        air.clone(),
        stopped,
        ended.clone(),
    ));
    Some(Inbound {
        tag,
        deliver,
        _stop: stop,
        _reservation: reservation,
    })
}

/// Whether a hello can be accepted: a slot for the link, and room for it at the acceptor.
pub(super) fn accept_inbound(
    radio: &Arc<Inner>,
    central: DeviceId,
    att_mtu: u16,
) -> Result<(Reservation, mpsc::OwnedPermit<BleLink>), Answer> {
    let acceptor = radio.lock().acceptor.clone().filter(|a| !a.is_closed());
    let acceptor = acceptor.ok_or(Answer::NotListening)?;
    if att_mtu < gatt::MIN_LINK_ATT_MTU {
        return Err(Answer::MtuTooSmall);
    }
    let reservation = radio.reserve(central)?;
    let permit = acceptor
        .try_reserve_owned()
        .map_err(|_| Answer::LinkLimit)?;
    Ok((reservation, permit))
}

/// Peripheral side of an open link: its datagrams go out tagged; it ends when its owner
/// drops it (and then disconnects the central), when the central goes, or when the
/// peripheral task stops it (the central said hello again).
pub(super) async fn run_inbound_link(
    inner: Weak<Inner>,
    address: bluer::Address,
    tag: u8,
    mut out_rx: mpsc::Receiver<Vec<u8>>,
    air: mpsc::Sender<Vec<u8>>,
    mut stopped: oneshot::Receiver<()>,
    ended: mpsc::Sender<(bluer::Address, u8)>,
) {
    let mut liveness = tokio::time::interval(LIVENESS_POLL);
    let mut dropped_by_owner = false;
    loop {
        tokio::select! {
            next = out_rx.recv() => match next {
                Some(datagram) => {
                    if air.send(gatt::tagged(tag, &datagram)).await.is_err() {
                        break;
                    }
                }
                None => {
                    dropped_by_owner = true;
                    break;
                }
            },
            _ = &mut stopped => break,
            _ = liveness.tick() => {
                let Some(radio) = inner.upgrade() else { break };
                if !radio.central_connected(address).await {
                    break;
                }
            }
        }
    }
    let _ = ended.send((address, tag)).await;
    if dropped_by_owner {
        if let Some(radio) = inner.upgrade() {
            radio.disconnect_central(address).await;
        }
    }
}

/// The one notification session: sends tagged datagrams while a central listens.
pub(super) async fn notify(
    mut air: mpsc::Receiver<Vec<u8>>,
    mut notifiers: mpsc::Receiver<bluer::gatt::local::CharacteristicNotifier>,
) {
    let mut session: Option<bluer::gatt::local::CharacteristicNotifier> = None;
    loop {
        tokio::select! {
            // A new session first: BlueZ starts one per subscribing central, each replacing
            // the last (bluer handles D-Bus calls concurrently, so one may come late and
            // already stopped: keep the live one).
            biased;
            notifier = notifiers.recv() => match notifier {
                Some(notifier) if !notifier.is_stopped() => session = Some(notifier),
                Some(_) => {}
                None => return,
            },
            value = air.recv() => {
                let Some(value) = value else { return };
                // No session: nobody listens, and the datagram is lost like on the air.
                if let Some(notifier) = &mut session {
                    if notifier.notify(value).await.is_err() {
                        session = None;
                    }
                }
            }
        }
    }
}
