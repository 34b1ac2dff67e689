//! `fogmesh kv`: the replicated store from the command line.

use super::query::follow;
use super::*;

#[derive(Debug, Subcommand)]
pub(crate) enum KvCli {
    /// Write a value (the argument, or --file); answers once it is on disk on this node.
    Put {
        key: String,
        value: Option<String>,
        #[arg(long, value_name = "FILE", conflicts_with = "value")]
        file: Option<PathBuf>,
        #[command(flatten)]
        ns: KvNamespace,
        #[command(flatten)]
        query: QueryArgs,
    },
    /// A key's value (raw, to stdout); --conflicts shows what it overwrote and by whom.
    Get {
        key: String,
        #[arg(long)]
        conflicts: bool,
        #[command(flatten)]
        ns: KvNamespace,
        #[command(flatten)]
        query: QueryArgs,
    },
    /// Delete a key (a tombstone that replicates like a write).
    Del {
        key: String,
        #[command(flatten)]
        ns: KvNamespace,
        #[command(flatten)]
        query: QueryArgs,
    },
    /// Keys starting with PREFIX, in order.
    List {
        prefix: Option<String>,
        /// Start after this key (paging).
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Show deleted keys too.
        #[arg(long)]
        deleted: bool,
        #[command(flatten)]
        ns: KvNamespace,
        #[command(flatten)]
        query: QueryArgs,
    },
    /// Follow changes to keys starting with PREFIX, local and replicated, as they happen.
    Watch {
        prefix: Option<String>,
        #[command(flatten)]
        ns: KvNamespace,
        #[command(flatten)]
        query: QueryArgs,
    },
}

#[derive(Debug, Args)]
pub(crate) struct KvNamespace {
    /// The namespace (letters, digits, `.`, `_`, `-`); `mesh` is for the mesh's admins.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
}

/// `fogmesh kv`.
pub(crate) async fn kv_command(command: KvCli) -> Result<()> {
    match command {
        KvCli::Put {
            key,
            value,
            file,
            ns,
            query,
        } => {
            let value = match (value, file) {
                (Some(text), None) => text.into_bytes(),
                (None, Some(path)) => std::fs::read(&path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
                _ => anyhow::bail!("give the value as an argument or with --file"),
            };
            let written = query
                .client()?
                .kv_write(&ns.namespace, &key, Some(value))
                .await?;
            print_out(query.json, &written, || {
                format!("stored {}/{key} at {}", ns.namespace, written.hlc)
            })
        }
        KvCli::Del { key, ns, query } => {
            let written = query.client()?.kv_write(&ns.namespace, &key, None).await?;
            print_out(query.json, &written, || {
                format!("deleted {}/{key} at {}", ns.namespace, written.hlc)
            })
        }
        KvCli::Get {
            key,
            conflicts,
            ns,
            query,
        } => {
            let Some(view) = query.client()?.kv_get(&ns.namespace, &key).await? else {
                anyhow::bail!("no key {}/{key} on this node", ns.namespace);
            };
            if query.json {
                return print_line(&serde_json::to_string_pretty(&view)?);
            }
            if conflicts {
                return print_line(&crate::client::render::render_key_versions(&view));
            }
            if view.winner.deleted {
                anyhow::bail!("{}/{key} was deleted ({})", ns.namespace, view.winner.hlc);
            }
            let bytes = view
                .winner
                .value_hex
                .as_deref()
                .map(hex::decode)
                .transpose()?
                .unwrap_or_default();
            write_stdout(&bytes)
        }
        KvCli::List {
            prefix,
            after,
            limit,
            deleted,
            ns,
            query,
        } => {
            let list = crate::kv::api::KvListQuery {
                prefix: prefix.unwrap_or_default(),
                after,
                limit: Some(limit),
                deleted,
            };
            let keys = query.client()?.kv_list(&ns.namespace, &list).await?;
            print_out(query.json, &keys, || {
                crate::client::render::render_keys(&keys)
            })
        }
        KvCli::Watch { prefix, ns, query } => {
            let filter = crate::control::events::EventFilter {
                kind: None,
                namespace: Some(ns.namespace.clone()),
                prefix: Some(prefix.unwrap_or_default()),
            };
            let client = query.client()?;
            let mut stream = client.events_filtered(&filter).await?;
            if !query.json {
                eprintln!(
                    "watching {}/{}* on the node at {}; Ctrl-C stops",
                    ns.namespace,
                    filter.prefix.as_deref().unwrap_or(""),
                    client.addr()
                );
            }
            follow(&mut stream, query.json).await
        }
    }
}

/// What one entry of `kv-bench`'s divergence phase takes encoded: a 100-byte value under
/// `div/NNNNNNN`, signed by an Ed25519 key.
pub(crate) fn sample_entry_bytes() -> usize {
    use fogmesh_kv::{Entry, Hlc, Version};
    let author = libp2p::identity::Keypair::generate_ed25519();
    let entry = Entry {
        namespace: "bench".into(),
        key: "div/0000000".into(),
        value: Some(serde_bytes::ByteBuf::from(vec![b'v'; 100])),
        version: Version {
            hlc: Hlc {
                wall_ms: 1_800_000_000_000,
                counter: 0,
            },
            author: serde_bytes::ByteBuf::from(author.public().to_peer_id().to_bytes()),
        },
        signature: serde_bytes::ByteBuf::from(vec![0; 64]),
    };
    fogmesh_wire::codec::encode(&entry).map_or(0, |b| b.len())
}
