//! Arbitrary bytes as an anti-entropy request (answered by a small replica) and as the
//! answer to each request a session sends first: never a panic, never an answer beyond the
//! message bound.
#![no_main]

use fogmesh_kv::{Entry, Hlc, Version};
use fogmesh_kv::sync::{
    answer, encoded_len, MemReplica, SyncRequest, SyncResponse, SyncSession, BATCH_BYTES,
    MAX_MESSAGE_BYTES,
};
use libfuzzer_sys::fuzz_target;
use serde_bytes::ByteBuf;

fn replica() -> MemReplica {
    let mut replica = MemReplica::new();
    for k in 0..200u32 {
        replica.merge(Entry {
            namespace: "fuzz".into(),
            key: format!("k{k}"),
            value: Some(ByteBuf::from(vec![k as u8; 40])),
            version: Version {
                hlc: Hlc {
                    wall_ms: u64::from(k),
                    counter: 0,
                },
                author: ByteBuf::from(vec![1; 38]),
            },
            signature: ByteBuf::from(vec![2; 64]),
        });
    }
    replica
}

fuzz_target!(|data: &[u8]| {
    let replica = replica();
    if let Ok(request) =
        fogmesh_wire::codec::decode_bounded::<SyncRequest>(data, MAX_MESSAGE_BYTES)
    {
        if let Ok(response) = answer(&replica, &request) {
            assert!(encoded_len(&response) <= MAX_MESSAGE_BYTES as u64);
        }
    }
    if let Ok(response) =
        fogmesh_wire::codec::decode_bounded::<SyncResponse>(data, MAX_MESSAGE_BYTES)
    {
        let mut session = SyncSession::new();
        if let Ok(requests) = session.next_requests(&replica, BATCH_BYTES, 4) {
            for (id, _) in requests {
                let _ = session.on_response(&replica, id, response.clone());
            }
        }
    }
});
