//! Discovery: the scan (stopped and started again for the duty cycle), what was heard and
//! how strongly, and each fogmesh device's identity read once in the background.

use std::sync::{Arc, Weak};

use btleplug::api::{Central as _, CentralEvent, Characteristic, Peripheral as _, ScanFilter};
use btleplug::platform::{Peripheral, PeripheralId};
use futures::stream::BoxStream;
use futures::StreamExt;
use libp2p::PeerId;
use tokio::time::Instant;
use uuid::Uuid;

use super::super::driver::{BleError, DeviceId, RadioDuty};
use super::super::gatt::{self};

use super::*;

/// Follows BlueZ's advertisement events, applies the scan duty cycle, refreshes signal
/// strengths and starts identity reads. Ends with the radio.
pub(super) async fn scan(inner: Weak<Inner>, mut events: BoxStream<'static, CentralEvent>) {
    let mut tick = tokio::time::interval(TICK);
    let mut cycle_start = Instant::now();
    let mut scanning = true;
    let mut last_duty = RadioDuty::CONTINUOUS;
    loop {
        let event = tokio::select! {
            event = events.next() => match event {
                Some(event) => Some(event),
                None => return,
            },
            _ = tick.tick() => None,
        };
        let Some(radio) = inner.upgrade() else {
            return;
        };
        if let Some(event) = event {
            heard_event(&radio, event).await;
            continue;
        }
        let duty = radio.lock().duty;
        if duty != last_duty {
            last_duty = duty;
            cycle_start = Instant::now();
        }
        let want = duty.scanning_at(cycle_start.elapsed());
        if want != scanning {
            let switched = if want {
                radio.central.start_scan(ScanFilter::default()).await
            } else {
                radio.central.stop_scan().await
            };
            match switched {
                Ok(()) => scanning = want,
                Err(err) => tracing::warn!(%err, scanning = want, "cannot switch BLE scanning"),
            }
        }
        if scanning {
            refresh_rssi(&radio).await;
        }
        radio.lock().prune();
        if let Some((device, peripheral)) = next_unidentified(&radio) {
            radio.lock().identifying = true;
            tokio::spawn(identify(Arc::downgrade(&radio), device, peripheral));
        }
    }
}

/// One advertisement (or signal-strength update) BlueZ reported.
pub(super) async fn heard_event(radio: &Inner, event: CentralEvent) {
    let service = Uuid::from_u128(gatt::SERVICE_UUID);
    match event {
        CentralEvent::ServiceDataAdvertisement { id, service_data } => {
            if let Some(device) = service_data
                .get(&service)
                .and_then(|d| gatt::parse_advert(d))
            {
                radio.lock().saw(id, device, None);
            }
        }
        CentralEvent::DeviceDiscovered(id) | CentralEvent::DeviceUpdated(id) => {
            let known = {
                let state = radio.lock();
                if state.not_ours.contains(&id) {
                    return;
                }
                state.device_of.get(&id).copied()
            };
            match known {
                Some(device) => radio.lock().saw(id, device, None),
                None => {
                    // A device not seen before: one look at its advertisement data.
                    let properties = match radio.central.peripheral(&id).await {
                        Ok(p) => p.properties().await.ok().flatten(),
                        Err(_) => None,
                    };
                    let device = properties.as_ref().and_then(|p| {
                        p.service_data
                            .get(&service)
                            .and_then(|d| gatt::parse_advert(d))
                    });
                    let mut state = radio.lock();
                    match device {
                        Some(device) => state.saw(id, device, properties.and_then(|p| p.rssi)),
                        None => {
                            state.not_ours.insert(id);
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

pub(super) async fn refresh_rssi(radio: &Inner) {
    let heard: Vec<(DeviceId, PeripheralId)> = radio
        .lock()
        .heard_now()
        .map(|(d, h)| (*d, h.peripheral.clone()))
        .collect();
    for (device, id) in heard {
        let Ok(peripheral) = radio.central.peripheral(&id).await else {
            continue;
        };
        if let Ok(Some(rssi)) = peripheral
            .properties()
            .await
            .map(|p| p.and_then(|p| p.rssi))
        {
            if let Some(h) = radio.lock().heard.get_mut(&device) {
                h.rssi = rssi;
            }
        }
    }
}

pub(super) fn next_unidentified(radio: &Inner) -> Option<(DeviceId, PeripheralId)> {
    let state = radio.lock();
    if state.identifying {
        return None;
    }
    let next = state
        .heard_now()
        .filter(|(device, h)| {
            h.identity.is_none()
                && !state.linked.contains(device)
                && h.identity_failed_at
                    .is_none_or(|at| at.elapsed() >= IDENTITY_RETRY)
        })
        .map(|(device, h)| (*device, h.peripheral.clone()))
        .next();
    next
}

/// Reads a device's identity, one device at a time.
pub(super) async fn identify(inner: Weak<Inner>, device: DeviceId, id: PeripheralId) {
    let Some(radio) = inner.upgrade() else {
        return;
    };
    let identity = read_identity(&radio, &id, device).await;
    let mut state = radio.lock();
    state.identifying = false;
    if let Some(heard) = state.heard.get_mut(&device) {
        match identity {
            Ok(peer) => heard.identity = Some(peer),
            Err(err) => {
                tracing::debug!(%device, %err, "cannot read a device's identity");
                heard.identity_failed_at = Some(Instant::now());
            }
        }
    }
}

pub(super) async fn read_identity(
    radio: &Inner,
    id: &PeripheralId,
    device: DeviceId,
) -> Result<PeerId, BleError> {
    let peripheral = radio
        .central
        .peripheral(id)
        .await
        .map_err(|e| adapter_error("device gone", e))?;
    let was_connected = peripheral.is_connected().await.unwrap_or(false);
    let read = async {
        connect_gatt(&peripheral).await?;
        let characteristic = find(&peripheral, gatt::IDENTITY_UUID)?;
        let value = peripheral
            .read(&characteristic)
            .await
            .map_err(|e| adapter_error("read identity", e))?;
        gatt::parse_identity(&value, device)
            .ok_or_else(|| BleError::Adapter("identity does not match the advertised id".into()))
    };
    let result = tokio::time::timeout(OPEN_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| Err(BleError::Adapter("identity read timed out".into())));
    // Disconnecting drops the whole Bluetooth connection, so not if a link to the device
    // opened meanwhile, or the connection was there before.
    if !was_connected && !radio.lock().linked.contains(&device) {
        let _ = peripheral.disconnect().await;
    }
    result
}

/// Connects to a device and learns its GATT services (what both a link and an identity read
/// start with).
pub(super) async fn connect_gatt(peripheral: &Peripheral) -> Result<(), BleError> {
    peripheral
        .connect()
        .await
        .map_err(|e| adapter_error("connect", e))?;
    peripheral
        .discover_services()
        .await
        .map_err(|e| adapter_error("service discovery", e))
}

pub(super) fn find(peripheral: &Peripheral, uuid: u128) -> Result<Characteristic, BleError> {
    let uuid = Uuid::from_u128(uuid);
    peripheral
        .characteristics()
        .into_iter()
        .find(|c| c.uuid == uuid)
        .ok_or_else(|| BleError::Adapter(format!("the device has no characteristic {uuid}")))
}
