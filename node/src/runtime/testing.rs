//! Test support: a capability's storage effects carried out the way the storage task does
//! (in order, on one store), with the outcomes fed back to the capability, so a capability
//! can be tested on a real store without a driver.

use fogmesh_store::Store;

use crate::runtime::capability::{Capability, Effect, Lane, Outbox};

/// Carries out every storage effect in `out` (and those the outcomes cause) against
/// `store`; the other effects are returned, in order.
pub fn run_storage<C: Capability + ?Sized>(
    capability: &mut C,
    store: &Store,
    now_ms: u64,
    out: &mut Outbox,
) -> Vec<Effect> {
    let mut rest = Vec::new();
    loop {
        let effects: Vec<Effect> = out.drain().collect();
        if effects.is_empty() {
            return rest;
        }
        for effect in effects {
            match effect {
                Effect::Persist(batch) => {
                    if let Err(error) = store.apply(batch) {
                        rest.push(Effect::StoreFailed(error.to_string()));
                    }
                }
                Effect::PersistDurable { batch, token } => {
                    let result = store
                        .apply_durable(batch)
                        .map(drop)
                        .map_err(|e| e.to_string());
                    capability.on_durable(now_ms, token, result, out);
                }
                Effect::Job {
                    lane: Lane::Storage { durable },
                    job,
                    token,
                } => {
                    let output = job();
                    let flushed = if durable {
                        store.flush().map_err(|e| e.to_string())
                    } else {
                        Ok(())
                    };
                    capability.on_job(now_ms, token, flushed.map(|()| output), out);
                }
                other => rest.push(other),
            }
        }
    }
}
