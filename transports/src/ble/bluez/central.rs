//! The central side (btleplug): opening a link to a device (connect, hello, subscribe) and
//! running it until either side drops it.

use std::sync::Arc;

use btleplug::api::{Central as _, Characteristic, Peripheral as _, ValueNotification, WriteType};
use btleplug::platform::Peripheral;
use futures::StreamExt;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::super::driver::{BleError, BleLink, DeviceId};
use super::super::gatt::{self, Answer};

use super::*;

impl BluezRadio {
    pub(super) async fn open_link(
        inner: Arc<Inner>,
        device: DeviceId,
        reservation: Reservation,
    ) -> Result<BleLink, BleError> {
        let id = inner
            .lock()
            .heard
            .get(&device)
            .map(|h| h.peripheral.clone())
            .ok_or(BleError::NotInRange(device))?;
        let peripheral = inner
            .central
            .peripheral(&id)
            .await
            .map_err(|_| BleError::NotInRange(device))?;
        let local = inner.local;
        let opening = async {
            connect_gatt(&peripheral).await?;
            let rx = find(&peripheral, gatt::RX_UUID)?;
            let tx = find(&peripheral, gatt::TX_UUID)?;
            // Asked for before subscribing, so the answer cannot slip past.
            let mut notifications = peripheral
                .notifications()
                .await
                .map_err(|e| adapter_error("notifications", e))?;
            // BlueZ may still hold our subscription from an earlier connection to the device.
            if let Err(err) = peripheral.subscribe(&tx).await {
                let text = err.to_string();
                if !(text.contains("lready") || text.contains("InProgress")) {
                    return Err(adapter_error("subscribe", err));
                }
            }
            peripheral
                .write(&rx, &gatt::hello(local), WriteType::WithoutResponse)
                .await
                .map_err(|e| adapter_error("hello", e))?;
            let tx_uuid = Uuid::from_u128(gatt::TX_UUID);
            // Other links' notifications reach us too; wait for the answer addressed to us.
            let answer = loop {
                let Some(note) = notifications.next().await else {
                    return Err(BleError::LinkBroken);
                };
                if note.uuid != tx_uuid {
                    continue;
                }
                let addressed =
                    gatt::untag(gatt::CONTROL_TAG, &note.value).and_then(Answer::decode);
                if let Some((to, answer)) = addressed {
                    if to == local {
                        break answer;
                    }
                }
            };
            match answer {
                Answer::Accepted { att_mtu, tag } => Ok((rx, notifications, att_mtu, tag)),
                Answer::AlreadyLinked => Err(BleError::AlreadyLinked(device)),
                Answer::LinkLimit => Err(BleError::LinkLimit(device)),
                Answer::NotListening | Answer::MtuTooSmall => Err(BleError::Adapter(format!(
                    "the device refused the link ({answer:?})"
                ))),
            }
        };
        let (rx, notifications, att_mtu, tag) =
            match tokio::time::timeout(OPEN_TIMEOUT, opening).await {
                Ok(Ok(opened)) => opened,
                Ok(Err(err)) => {
                    hang_up(&peripheral).await;
                    return Err(err);
                }
                Err(_) => {
                    hang_up(&peripheral).await;
                    return Err(BleError::Adapter("opening the link timed out".into()));
                }
            };
        let (out_tx, out_rx) = mpsc::channel(LINK_QUEUE);
        let (deliver, in_rx) = mpsc::channel(LINK_QUEUE);
        tokio::spawn(run_outbound_link(
            peripheral,
            rx,
            tag,
            notifications,
            out_rx,
            deliver,
            reservation,
        ));
        Ok(BleLink {
            peer: device,
            max_datagram: gatt::max_datagram(att_mtu.into()),
            outbound: true,
            tx: out_tx,
            rx: in_rx,
        })
    }
}

/// Central side of an open link: writes go out without response, this link's notifications
/// come in (others' are skipped), and the connection is checked every [`LIVENESS_POLL`]
/// (btleplug's notification stream does not end when the device goes).
pub(super) async fn run_outbound_link(
    peripheral: Peripheral,
    rx: Characteristic,
    tag: u8,
    mut notifications: std::pin::Pin<Box<dyn futures::Stream<Item = ValueNotification> + Send>>,
    mut out_rx: mpsc::Receiver<Vec<u8>>,
    deliver: mpsc::Sender<Vec<u8>>,
    _reservation: Reservation,
) {
    let tx_uuid = Uuid::from_u128(gatt::TX_UUID);
    let mut liveness = tokio::time::interval(LIVENESS_POLL);
    loop {
        tokio::select! {
            note = notifications.next() => match note {
                Some(note) if note.uuid == tx_uuid => {
                    if let Some(datagram) = gatt::untag(tag, &note.value) {
                        // Full: dropped, as the air would; never blocks the stream.
                        if let Err(mpsc::error::TrySendError::Closed(_)) =
                            deliver.try_send(datagram.to_vec())
                        {
                            break;
                        }
                    }
                }
                Some(_) => {}
                None => break,
            },
            next = out_rx.recv() => match next {
                Some(datagram) => {
                    if peripheral.write(&rx, &datagram, WriteType::WithoutResponse).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            _ = liveness.tick() => {
                if !peripheral.is_connected().await.unwrap_or(false) {
                    break;
                }
            }
        }
    }
    hang_up(&peripheral).await;
}

/// Ends a central's connection, unsubscribing first so BlueZ does not carry the
/// subscription into the next connection to the device.
pub(super) async fn hang_up(peripheral: &Peripheral) {
    if let Ok(tx) = find(peripheral, gatt::TX_UUID) {
        let _ = peripheral.unsubscribe(&tx).await;
    }
    let _ = peripheral.disconnect().await;
}
