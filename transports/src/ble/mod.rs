//! The BitChat-style Bluetooth LE side: link frames, the reliable stream over a link, the
//! driver contract, the simulated radio and the libp2p transport over it.

pub mod arq;
pub mod driver;
pub mod frame;
pub mod sim;
pub mod stream;
pub mod transport;
