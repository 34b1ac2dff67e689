//! Arbitrary bytes as a task's WebAssembly module, run with a small fuel and memory budget:
//! never a panic, never a hang (fuel), never more memory than the cap.
#![no_main]

use std::time::Duration;

use fogmesh_node::cluster::exec::{self, ExecLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = ExecLimits {
        memory_bytes: 4 * 1024 * 1024,
        duration: Duration::from_millis(2),
    };
    let _ = exec::run(data, b"fuzz input", limits);
});
