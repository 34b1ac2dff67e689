//! `fogmesh run` (and `fogmesh` alone): run a node until Ctrl-C or SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use anyhow::{bail, Context};
use libp2p::Multiaddr;

use crate::config::LogFormat;
use crate::{identity, logging, node};
use fogmesh_device::{DeviceClass, SimulateConfig};

#[derive(Debug, Args, Default)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    select: NodeSelect,
    /// Listen address (repeatable). Default: TCP and QUIC on 0.0.0.0 port 4747.
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Peer to join and keep connected (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    /// Turn off LAN discovery by mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// Turn off the Kademlia DHT (peers only through bootstrap, mDNS and who dials in).
    #[arg(long)]
    no_dht: bool,
    /// Turn off QUIC (TCP only).
    #[arg(long)]
    no_quic: bool,
    /// Relay for no other node, even when this one is publicly reachable.
    #[arg(long)]
    no_relay_service: bool,
    /// No reachability checks, relay reservations or hole punching (docs/nat.md).
    #[arg(long)]
    no_nat_traversal: bool,
    /// Let handshakes from this machine skip the per-address rate limit and backoff (local
    /// testnets, where every node dials from 127.0.0.1).
    #[arg(long)]
    exempt_loopback: bool,
    /// How often to publish telemetry, e.g. 30s or 1s.
    #[arg(long, value_parser = humantime::parse_duration)]
    telemetry_interval: Option<Duration>,
    /// Control API port on 127.0.0.1 (0 picks a free one).
    #[arg(long)]
    control_port: Option<u16>,
    /// Most simultaneous connections.
    #[arg(long)]
    max_connections: Option<u32>,
    /// Connections kept when more are open.
    #[arg(long)]
    target_peers: Option<u32>,
    /// Log filter, RUST_LOG syntax (RUST_LOG itself wins if set).
    #[arg(long)]
    log: Option<String>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// How often to re-sense the device, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    sense_interval: Option<Duration>,
    /// The mesh to join (`<name>.mesh.json` from `fogmesh mesh init`); needs --ticket.
    #[arg(long, value_name = "FILE")]
    mesh: Option<PathBuf>,
    /// This node's ticket for that mesh (from `fogmesh ticket issue`).
    #[arg(long, value_name = "FILE")]
    ticket: Option<PathBuf>,
    /// Bluetooth LE only: no internet transport, no socket but the loopback control API.
    /// Needs a radio: a Bluetooth adapter (builds with the `bluetooth` feature, Linux) or the
    /// simulated one of a radio testnet (--radio-medium).
    #[arg(long)]
    offline: bool,
    /// The simulated radio shared by a testnet's processes (its medium file, see
    /// docs/ble.md); this node is the device its PeerId names.
    #[arg(long, value_name = "FILE", requires = "offline")]
    radio_medium: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) simulate: SimulateArgs,
}

/// Pretend to be another device (overrides the config's `[simulate]` values).
#[derive(Debug, Args, Default, Clone)]
pub(crate) struct SimulateArgs {
    /// Pretend to be this class of device.
    #[arg(long, value_enum)]
    simulate_device: Option<DeviceClass>,
    /// Simulated battery level in percent.
    #[arg(long)]
    battery: Option<f32>,
    /// Simulated charging state.
    #[arg(long)]
    charging: Option<bool>,
    /// Simulated temperature in degrees Celsius.
    #[arg(long, allow_negative_numbers = true)]
    temperature: Option<f32>,
}

impl SimulateArgs {
    pub(crate) fn layer(&self) -> Option<SimulateConfig> {
        let sim = SimulateConfig {
            device: self.simulate_device,
            battery: self.battery,
            charging: self.charging,
            temperature: self.temperature,
            ..SimulateConfig::default()
        };
        (!sim.is_empty()).then_some(sim)
    }
}

impl RunArgs {
    pub(crate) fn layer(&self) -> ConfigLayer {
        ConfigLayer {
            data_dir: None,
            listen: (!self.listen.is_empty()).then(|| self.listen.clone()),
            bootstrap: (!self.bootstrap.is_empty()).then(|| self.bootstrap.clone()),
            mdns: self.no_mdns.then_some(false),
            dht: self.no_dht.then_some(false),
            quic: self.no_quic.then_some(false),
            telemetry_interval: self.telemetry_interval,
            control_port: self.control_port,
            max_connections: self.max_connections,
            target_peers: self.target_peers,
            log: self.log.clone(),
            log_format: self.log_format,
            sense_interval: self.sense_interval,
            schedule_interval: None,
            simulate: self.simulate.layer(),
            mesh: self.mesh.clone(),
            ticket: self.ticket.clone(),
            exempt_loopback: self.exempt_loopback.then_some(true),
            // Config file and FOGMESH_* only: tuning, not something to type per run.
            telemetry_expire_after: None,
            telemetry_max_origins: None,
            telemetry_full_mesh_below: None,
            nat_traversal: self.no_nat_traversal.then_some(false),
            relay_service: self.no_relay_service.then_some(false),
            relay_max_reservations: None,
            relay_max_circuits: None,
        }
    }
}

pub(crate) async fn run(args: RunArgs) -> Result<()> {
    let settings = args.select.settings(args.layer())?;
    logging::init(&settings.log, settings.log_format);
    if settings
        .listen
        .iter()
        .any(|a| a.to_string().contains("0.0.0.0"))
        && !settings.mdns
    {
        tracing::debug!("mDNS off; peers come from bootstrap addresses only");
    }
    let node = if args.offline {
        start_offline(settings, args.radio_medium.as_deref()).await?
    } else {
        node::start(settings).await?
    };
    // `node started` already named the PeerId and control address.
    tracing::info!("ready; Ctrl-C stops the node");
    let stopped_by_itself = tokio::select! {
        signal = shutdown_signal() => { signal?; false }
        _ = wait_finished(&node) => true,
    };
    if stopped_by_itself {
        bail!("the node's event loop ended unexpectedly");
    }
    tracing::info!("shutting down");
    match tokio::time::timeout(node::SHUTDOWN_BUDGET, node.shutdown()).await {
        Ok(()) => Ok(()),
        Err(_) => bail!(
            "shutdown took longer than {}s",
            node::SHUTDOWN_BUDGET.as_secs()
        ),
    }
}

/// `fogmesh run --offline`: Bluetooth LE only.
pub(crate) async fn start_offline(
    mut settings: crate::config::Settings,
    medium: Option<&std::path::Path>,
) -> Result<node::RunningNode> {
    use fogmesh_transports::ble::driver::{DeviceId, SharedDriver};
    use fogmesh_transports::ble::medium::MediumRadio;
    if let Some(addr) = settings
        .bootstrap
        .iter()
        .find(|a| fogmesh_transports::ble::transport::device_of(a).is_none())
    {
        bail!("--offline: bootstrap address {addr} is not a BLE address (/unix/ble-<device>/p2p/<PeerId>)");
    }
    settings.listen = vec!["/unix/ble".parse()?];
    settings.mdns = false;
    settings.quic = false;
    let key = identity::load_or_create(&settings.data_dir)?;
    let peer = key.public().to_peer_id();
    let radio: SharedDriver = match medium {
        Some(medium) => {
            let device = DeviceId::of_peer(&peer);
            Arc::new(MediumRadio::open(medium, device, rand::random()).await?)
        }
        None => bluetooth_adapter(peer).await?,
    };
    Ok(node::start_on(settings, node::Network::Offline(radio)).await?)
}

/// The machine's Bluetooth adapter, through BlueZ.
#[cfg(all(feature = "bluetooth", target_os = "linux"))]
pub(crate) async fn bluetooth_adapter(
    peer: libp2p::PeerId,
) -> Result<fogmesh_transports::ble::driver::SharedDriver> {
    use crate::runtime::peers::budget::{RADIO_SLACK, RADIO_TARGET};
    let radio = fogmesh_transports::ble::bluez::BluezRadio::open(peer, RADIO_TARGET + RADIO_SLACK)
        .await
        .context(
            "--offline needs a Bluetooth LE adapter (BlueZ's bluetoothd running, an adapter \
             present); on the simulated radio of a testnet, pass --radio-medium FILE",
        )?;
    Ok(Arc::new(radio))
}

#[cfg(not(all(feature = "bluetooth", target_os = "linux")))]
pub(crate) async fn bluetooth_adapter(
    _peer: libp2p::PeerId,
) -> Result<fogmesh_transports::ble::driver::SharedDriver> {
    bail!(
        "--offline needs a Bluetooth LE radio, and this build has no driver for real adapters \
         (build with `--features bluetooth`, Linux); on the simulated radio of a testnet, pass \
         --radio-medium FILE (`fogmesh testnet up --radio line --offline` does; see docs/ble.md)"
    )
}

pub(crate) async fn wait_finished(node: &node::RunningNode) {
    while !node.is_finished() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(crate) async fn shutdown_signal() -> Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot watch Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot watch Ctrl-C")?;
    Ok(())
}
