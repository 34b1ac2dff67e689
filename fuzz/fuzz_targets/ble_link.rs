//! Arbitrary datagrams into a BLE link end (frame decoder and ARQ state machine): never a
//! panic, every frame that decodes re-encodes to its bytes, every datagram the link sends
//! fits its MTU and decodes, and what it holds for the reader stays within its buffer.
#![no_main]

use std::time::{Duration, Instant};

use fogmesh_transports::ble::arq::{Arq, ArqConfig, Read};
use fogmesh_transports::ble::frame::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mtu_byte, mut rest)) = data.split_first() else {
        return;
    };
    let config = ArqConfig {
        max_datagram: 20 + usize::from(mtu_byte) * 2,
        recv_buffer: 4096,
        send_buffer: 4096,
        ..ArqConfig::default()
    };
    let max_datagram = config.max_datagram;
    let recv_buffer = config.recv_buffer;
    let start = Instant::now();
    let mut now = start;
    let mut arq = Arq::new(config, start);
    // Something in flight, so acks have frames to act on.
    arq.write(&[0xAB; 3000]);
    let mut buf = [0u8; 512];
    while let Some((&header, tail)) = rest.split_first() {
        let len = usize::from(header & 0x7f).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        rest = next;
        if let Ok(frame) = Frame::decode(datagram) {
            assert_eq!(frame.encode(), datagram);
        }
        let _ = arq.handle_datagram(now, datagram);
        if header & 0x80 != 0 {
            now += Duration::from_millis(u64::from(header & 0x3f) * 50);
            arq.handle_timeout(now);
        }
        while let Some(out) = arq.poll_transmit(now) {
            assert!(out.len() <= max_datagram, "{} > {max_datagram}", out.len());
            assert!(Frame::decode(&out).is_ok());
        }
        assert!(arq.readable() <= recv_buffer);
        if let Read::Data(n) = arq.read(&mut buf) {
            assert!(n <= buf.len());
        }
    }
});
