//! `fogmesh send`: a message through the mesh, optionally waiting for its delivery.

use std::time::Duration;

use super::*;

#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    #[command(flatten)]
    query: QueryArgs,
    /// To every node in range of the flood instead of one node (no acknowledgement).
    #[arg(long)]
    broadcast: bool,
    /// Wait for the recipient's acknowledgement, at most this long (default 60s). Exits 1
    /// if it has not come by then; the message stays held and may still be delivered.
    #[arg(long, num_args = 0..=1, default_missing_value = "60s", value_parser = humantime::parse_duration)]
    wait: Option<Duration>,
    /// The recipient's PeerId, then the text (without --broadcast); the text (with it).
    #[arg(required = true, num_args = 1..)]
    words: Vec<String>,
}

pub(crate) async fn send_command(args: SendArgs) -> Result<()> {
    let mut words = args.words.into_iter();
    let to = if args.broadcast {
        None
    } else {
        let peer = words.next().unwrap_or_default();
        Some(
            peer.parse::<libp2p::PeerId>()
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{peer:?} is not a PeerId ({e}); to send to everyone, use --broadcast"
                    )
                })?
                .to_string(),
        )
    };
    let text = words.collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        anyhow::bail!("nothing to send: give the text after the PeerId");
    }
    let client = args.query.client()?;
    let sent = client
        .send_message(&crate::relay::api::SendMessageRequest {
            to: to.clone(),
            text,
            app: None,
        })
        .await?;
    let Some(wait) = args.wait.filter(|_| to.is_some()) else {
        if args.query.json {
            return print_line(&serde_json::to_string_pretty(&sent)?);
        }
        return print_line(&format!(
            "sent {} ({})",
            sent.id,
            if to.is_some() { "pending" } else { "broadcast" }
        ));
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let view = client.message(&sent.id).await?;
        if view.status == "delivered" || tokio::time::Instant::now() >= deadline {
            if args.query.json {
                print_line(&serde_json::to_string_pretty(&view)?)?;
            } else {
                let after = view
                    .at_ms
                    .map(|at| format!(" after {} ms", at.saturating_sub(view.created_ms)))
                    .unwrap_or_default();
                print_line(&format!("{} {}{after}", view.id, view.status))?;
            }
            if view.status != "delivered" {
                anyhow::bail!(
                    "not acknowledged within {}: the message stays held and is delivered when a path to the recipient appears",
                    humantime::format_duration(wait)
                );
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
