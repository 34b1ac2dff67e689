//! Arbitrary bytes as a cluster frame (decode, then admission) and as a cluster command
//! applied to a small cluster's state: never a panic; a refused command changes nothing.
#![no_main]

use fogmesh_consensus::capacity::NodeCapacity;
use fogmesh_consensus::state::{ClusterState, Command, NodeId};
use fogmesh_consensus::wire;
use libfuzzer_sys::fuzz_target;

fn cluster() -> ClusterState {
    let mut state = ClusterState::default();
    for n in 1..=3u8 {
        let _ = state.apply(Command::Join {
            node: NodeId(vec![n]),
            capacity: NodeCapacity {
                cores: 4,
                cpu_pct: 50,
                memory_mb: 1024,
                max_tasks: 2,
                gpu: n == 1,
                battery: None,
                score_milli: 100 * u32::from(n),
            },
            at_ms: 0,
        });
    }
    state
}

fuzz_target!(|data: &[u8]| {
    if let Ok(received) = wire::decode(data) {
        let _ = wire::admit(
            &received.cluster,
            &received.message,
            "c1",
            2,
            b"peer",
            &[1, 2, 3],
        );
    }
    if let Ok(command) = fogmesh_wire::codec::decode_bounded::<Command>(data, 64 * 1024) {
        let mut state = cluster();
        let before = state.clone();
        if state.apply(command).is_err() {
            assert_eq!(state, before, "a refused command changed the state");
        }
        let _ = fogmesh_consensus::scheduler::plan(&state, 1_000, 16);
    }
});
