//! The BitChat-style Bluetooth LE side: link frames, the reliable stream over a link, the
//! driver contract, the simulated radio and the libp2p transport over it.

pub mod arq;
#[cfg(all(feature = "bluetooth", target_os = "linux"))]
pub mod bluez;
pub mod driver;
pub mod frame;
pub mod gatt;
pub mod medium;
pub mod sim;
pub mod stream;
pub mod transport;

/// Sleeps until `at`, or forever without a deadline (a `select!` arm that never fires).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
