//! The real Bluetooth backend where there is no Bluetooth: it must say so, not hang or
//! panic. (With no radio on the build machines, the rest of it is exercised only by the
//! pure GATT layout tests in `ble/gatt.rs`; see docs/ble.md, "The real radio".)
#![cfg(all(feature = "bluetooth", target_os = "linux"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fogmesh_transports::ble::bluez::BluezRadio;
use fogmesh_transports::ble::driver::BleError;

#[tokio::test]
async fn without_bluez_opening_the_radio_is_a_clear_error() {
    // libdbus reads the system bus address from here: a socket nobody listens on stands for
    // a machine without bluetoothd, whatever this machine has.
    std::env::set_var(
        "DBUS_SYSTEM_BUS_ADDRESS",
        "unix:path=/nonexistent/fogmesh-test/system_bus_socket",
    );
    let peer = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let opened = tokio::time::timeout(Duration::from_secs(30), BluezRadio::open(peer, 6))
        .await
        .expect("opening must fail promptly, not hang");
    match opened {
        Err(BleError::Adapter(message)) => {
            assert!(message.contains("bluetoothd"), "{message}");
        }
        other => panic!("expected an adapter error, got {other:?}"),
    }
}
