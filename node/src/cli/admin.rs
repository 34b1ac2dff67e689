//! `fogmesh mesh`, `ticket`, `config` and `store`: the tools around a node.

use super::*;
use anyhow::bail;
use std::time::Duration;

use crate::client;
use crate::node;
use crate::store_report;

#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Check the store (the node must be stopped): every acknowledged write present, every
    /// value readable. Exits 1 if it is damaged.
    Check {
        #[command(flatten)]
        select: NodeSelect,
        /// Repair a damaged store: keep everything readable, move the damaged store aside.
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum MeshCommand {
    /// Create a mesh: a root key (guard it) and a public mesh description.
    Init {
        /// Mesh name, used for the file names.
        #[arg(long)]
        name: String,
        /// Where to write `<name>.root.key` and `<name>.mesh.json`.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TicketCommand {
    /// Issue a ticket admitting a peer (signed by the mesh root).
    Issue {
        /// The mesh root key file.
        #[arg(long)]
        mesh_key: PathBuf,
        /// The PeerId admitted.
        #[arg(long)]
        peer: libp2p::PeerId,
        /// Roles, comma-separated (worker, coordinator, submitter, writer, gateway).
        #[arg(long, value_delimiter = ',', default_value = "worker")]
        roles: Vec<String>,
        /// Validity from now, e.g. 30d.
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        valid: Duration,
        /// Write the ticket here (binary) instead of printing it as hex.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Explain a ticket file (binary or hex).
    Show { file: PathBuf },
    /// Produce a signed revocation of a ticket, or of every ticket a peer holds so far.
    Revoke {
        #[arg(long)]
        mesh_key: PathBuf,
        /// The ticket file to revoke.
        #[arg(long, conflicts_with = "peer", required_unless_present = "peer")]
        ticket: Option<PathBuf>,
        /// The peer whose tickets issued until now are revoked.
        #[arg(long)]
        peer: Option<libp2p::PeerId>,
        /// Write the revocation here (binary) instead of printing it as hex.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also hand it to the running node (see --data-dir), which gossips it to the mesh.
        #[arg(long)]
        submit: bool,
        #[command(flatten)]
        select: NodeSelect,
    },
    /// Hand a revocation file to the running node, which applies, stores and gossips it.
    Publish {
        file: PathBuf,
        #[command(flatten)]
        select: NodeSelect,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Write a commented default config file.
    Init {
        /// Where to write it (default: the platform config dir's fogmesh/config.toml).
        #[arg(long)]
        path: Option<PathBuf>,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

pub(crate) fn store_check(select: &NodeSelect, repair: bool, json: bool) -> Result<()> {
    use fogmesh_store::integrity;
    let settings = select.settings(ConfigLayer::default())?;
    let dir = node::store_dir(&settings.data_dir);
    if !repair {
        let report = integrity::check(&dir)?;
        print_out(json, &report, || store_report::render_check(&report))?;
        if !report.healthy() {
            bail!("the store is damaged; `fogmesh store check --repair` keeps what is readable");
        }
        return Ok(());
    }
    match integrity::repair(&dir)? {
        None => {
            let report = integrity::check(&dir)?;
            print_out(json, &report, || {
                format!("{}\nnothing to repair", store_report::render_check(&report))
            })
        }
        Some(report) => print_out(json, &report, || store_report::render_repair(&report)),
    }
}

pub(crate) async fn publish_revocation(select: &NodeSelect, revocation: Vec<u8>) -> Result<()> {
    let settings = select.settings(ConfigLayer::default())?;
    let client = client::ControlClient::for_data_dir(&settings.data_dir)?;
    let outcome = client.submit_revocation(revocation).await?;
    let text = if outcome.new {
        format!(
            "revocation applied and gossiped; {} connection(s) closed",
            outcome.disconnected.len()
        )
    } else {
        "the node already had this revocation".to_owned()
    };
    print_line(&text)
}
