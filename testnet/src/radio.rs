//! Radio testnets: BLE-only nodes in separate processes sharing one simulated radio.
//!
//! `up --radio <layout> --offline` writes the medium file (`<dir>/radio.json`, see
//! `fogmesh_transports::ble::medium`): every node is a device at a position given by the
//! layout, receiving radio datagrams on its UDP port on 127.0.0.1 and advertising its
//! PeerId. Devices 8 apart with a range of 10 hear their layout neighbours only. The
//! `radio` subcommands edit the file while the testnet runs; every node re-reads it within
//! a quarter of a second.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use fogmesh_transports::ble::driver::DeviceId;
use fogmesh_transports::ble::medium::{DeviceEntry, MediumError, MediumFile, MediumLink};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// Distance between layout neighbours, and the radio range.
pub const SPACING: f64 = 8.0;
pub const RANGE: f64 = 10.0;

/// How a radio testnet's devices are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// In a row: each hears the one before and the one after.
    Line,
    /// On a square grid: each hears up to four.
    Grid,
    /// Each placed near a random earlier one (connected; seeded, so repeatable).
    Random,
}

pub fn medium_path(dir: &Path) -> PathBuf {
    dir.join("radio.json")
}

/// Positions for `n` devices.
pub fn positions(layout: Layout, n: usize, seed: u64) -> Vec<(f64, f64)> {
    match layout {
        Layout::Line => (0..n).map(|i| (SPACING * i as f64, 0.0)).collect(),
        Layout::Grid => {
            let side = (n as f64).sqrt().ceil().max(1.0) as usize;
            (0..n)
                .map(|i| (SPACING * (i % side) as f64, SPACING * (i / side) as f64))
                .collect()
        }
        Layout::Random => {
            // A small xorshift: the layout is data, not security.
            let mut state = seed | 1;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 1_000_000) as f64 / 1_000_000.0
            };
            let mut out: Vec<(f64, f64)> = Vec::with_capacity(n);
            for i in 0..n {
                if i == 0 {
                    out.push((0.0, 0.0));
                    continue;
                }
                let anchor = out[((next() * i as f64) as usize).min(i - 1)];
                let angle = next() * std::f64::consts::TAU;
                let dist = 5.0 + next() * 4.5;
                out.push((anchor.0 + dist * angle.cos(), anchor.1 + dist * angle.sin()));
            }
            out
        }
    }
}

/// The medium file for a testnet: device `i` is node `i`.
pub fn medium_for(layout: Layout, peer_ids: &[String], udp_ports: &[u16], seed: u64) -> MediumFile {
    let devices = positions(layout, peer_ids.len(), seed)
        .into_iter()
        .zip(peer_ids.iter().zip(udp_ports))
        .filter_map(|((x, y), (peer, port))| {
            let device = DeviceId::of_peer(&peer.parse::<PeerId>().ok()?);
            Some((
                device.to_string(),
                DeviceEntry {
                    addr: SocketAddr::from((Ipv4Addr::LOCALHOST, *port)),
                    x,
                    y,
                    peer_id: Some(peer.clone()),
                },
            ))
        })
        .collect();
    MediumFile {
        range: RANGE,
        max_links: 7,
        link: MediumLink::default(),
        devices,
        cuts: Vec::new(),
        joined: Vec::new(),
    }
}

/// A change to a running radio testnet.
#[derive(Debug, Clone, PartialEq)]
pub enum RadioChange {
    /// Put node `node` at `(x, y)`.
    Move { node: usize, x: f64, y: f64 },
    /// Nodes in `group` stop hearing every node outside it.
    Partition { group: Vec<usize> },
    /// Lift every partition and cut.
    Heal,
    /// Loss probability of every link opened from now on (0.0–1.0).
    Loss(f64),
}

#[derive(Debug, thiserror::Error)]
pub enum RadioError {
    #[error("this testnet has no radio (start it with `up --radio <layout> --offline`)")]
    NoRadio,
    #[error(transparent)]
    Medium(#[from] MediumError),
    #[error("no node {0} in this testnet")]
    NoNode(usize),
    #[error("loss must be between 0 and 1, not {0}")]
    BadLoss(f64),
}

/// Device ids in node order, found by the UDP port each node's device receives on (its
/// p2p port, recorded in the testnet state).
fn devices_in_order(file: &MediumFile, ports: &[u16]) -> Vec<Option<String>> {
    ports
        .iter()
        .map(|port| {
            file.devices
                .iter()
                .find(|(_, d)| d.addr.port() == *port)
                .map(|(id, _)| id.clone())
        })
        .collect()
}

/// Applies `change` to the medium file of the testnet in `dir`.
pub fn apply(dir: &Path, ports: &[u16], change: &RadioChange) -> Result<(), RadioError> {
    let path = medium_path(dir);
    if !path.exists() {
        return Err(RadioError::NoRadio);
    }
    let mut file = MediumFile::load(&path)?;
    let order = devices_in_order(&file, ports);
    let device = |node: usize| {
        order
            .get(node)
            .cloned()
            .flatten()
            .ok_or(RadioError::NoNode(node))
    };
    match change {
        RadioChange::Move { node, x, y } => {
            let id = device(*node)?;
            if let Some(entry) = file.devices.get_mut(&id) {
                entry.x = *x;
                entry.y = *y;
            }
        }
        RadioChange::Partition { group } => {
            let inside: BTreeSet<String> =
                group.iter().map(|n| device(*n)).collect::<Result<_, _>>()?;
            for a in &inside {
                for b in file.devices.keys().filter(|b| !inside.contains(*b)) {
                    file.cuts.push((a.clone(), b.clone()));
                }
            }
        }
        RadioChange::Heal => file.cuts.clear(),
        RadioChange::Loss(loss) => {
            if !(0.0..=1.0).contains(loss) {
                return Err(RadioError::BadLoss(*loss));
            }
            file.link.loss = *loss;
        }
    }
    file.save(&path)?;
    Ok(())
}

/// Each node's radio neighbours (node indexes), per the medium file; `None` without a radio.
pub fn neighbours(dir: &Path, ports: &[u16]) -> Option<Vec<Vec<usize>>> {
    let file = MediumFile::load(&medium_path(dir)).ok()?;
    let order = devices_in_order(&file, ports);
    let ids: Vec<Option<DeviceId>> = order
        .iter()
        .map(|o| o.as_deref().and_then(DeviceId::parse))
        .collect();
    Some(
        ids.iter()
            .map(|me| {
                let Some(me) = me else { return Vec::new() };
                ids.iter()
                    .enumerate()
                    .filter(|(_, other)| other.is_some_and(|o| file.in_range(*me, o)))
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: usize) -> Vec<String> {
        (0..n).map(|_| PeerId::random().to_string()).collect()
    }

    #[test]
    fn layouts_give_the_neighbours_they_promise_and_changes_apply() {
        let dir = tempfile::tempdir().unwrap();
        let ids = peers(9);
        let ports: Vec<u16> = (0..9).map(|i| 40_000 + i).collect();
        medium_for(Layout::Line, &ids, &ports, 1)
            .save(&medium_path(dir.path()))
            .unwrap();
        let n = neighbours(dir.path(), &ports).unwrap();
        assert_eq!(n[0], vec![1]);
        assert_eq!(n[4], vec![3, 5]);
        apply(
            dir.path(),
            &ports,
            &RadioChange::Partition {
                group: vec![0, 1, 2, 3],
            },
        )
        .unwrap();
        let n = neighbours(dir.path(), &ports).unwrap();
        assert_eq!((n[3].clone(), n[4].clone()), (vec![2], vec![5]));
        apply(dir.path(), &ports, &RadioChange::Heal).unwrap();
        apply(
            dir.path(),
            &ports,
            &RadioChange::Move {
                node: 8,
                x: 0.0,
                y: 8.0,
            },
        )
        .unwrap();
        let n = neighbours(dir.path(), &ports).unwrap();
        assert_eq!(n[8], vec![0]);
        assert!(apply(dir.path(), &ports, &RadioChange::Loss(1.5)).is_err());
        assert!(matches!(
            apply(
                dir.path(),
                &ports,
                &RadioChange::Move {
                    node: 9,
                    x: 0.0,
                    y: 0.0
                }
            ),
            Err(RadioError::NoNode(9))
        ));

        medium_for(Layout::Grid, &ids, &ports, 1)
            .save(&medium_path(dir.path()))
            .unwrap();
        let n = neighbours(dir.path(), &ports).unwrap();
        assert_eq!(n[4], vec![1, 3, 5, 7], "the centre of a 3×3 grid");
        // Random layouts are connected: every node reaches node 0.
        for seed in 0..20 {
            medium_for(Layout::Random, &ids, &ports, seed)
                .save(&medium_path(dir.path()))
                .unwrap();
            let n = neighbours(dir.path(), &ports).unwrap();
            let mut reached = BTreeSet::from([0]);
            let mut frontier = vec![0];
            while let Some(i) = frontier.pop() {
                for &j in &n[i] {
                    if reached.insert(j) {
                        frontier.push(j);
                    }
                }
            }
            assert_eq!(reached.len(), 9, "seed {seed}");
        }
    }
}
