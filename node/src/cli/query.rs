//! The commands that only ask the running node: `device`, `watch` (and, in `dispatch`,
//! `status`, `peers`, `telemetry`, `cluster`, `inbox`).

use std::time::Duration;

use super::run::SimulateArgs;
use super::*;
use crate::client;
use crate::device::DeviceMonitor;

#[derive(Debug, Args)]
pub(crate) struct DeviceArgs {
    #[command(flatten)]
    query: QueryArgs,
    /// Sense this machine here instead of asking a running node.
    #[arg(long)]
    local: bool,
    #[command(flatten)]
    simulate: SimulateArgs,
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    #[command(flatten)]
    select: NodeSelect,
    /// Control API address to ask instead of finding it through the data dir.
    #[arg(long)]
    api: Option<SocketAddr>,
    /// Print each event as the node sends it: one JSON object per line.
    #[arg(long)]
    json: bool,
}

/// `fogmesh watch`: one line per event until the node ends the stream.
pub(crate) async fn watch(args: WatchArgs) -> Result<()> {
    let client = control_client(&args.select, args.api, None)?;
    let mut stream = client.events().await?;
    if !args.json {
        eprintln!(
            "watching the node at {} (times in UTC); Ctrl-C stops",
            client.addr()
        );
    }
    follow(&mut stream, args.json).await
}

/// Prints a stream's events, one per line, until the node ends it.
pub(crate) async fn follow(stream: &mut client::EventStream, json: bool) -> Result<()> {
    use std::io::Write;
    while let Some(data) = stream.next_data().await? {
        let line = if json {
            data
        } else {
            crate::client::render::render_event(&data)
        };
        // stdout is line-buffered, so every event shows at once, also through a pipe.
        match writeln!(std::io::stdout().lock(), "{line}") {
            Ok(()) => {}
            // `fogmesh watch | head`: the reader is done, and so are we.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    eprintln!("the node ended the stream: it is shutting down");
    Ok(())
}

/// `fogmesh device`: the running node's view, or one local sensing pass.
pub(crate) async fn device_command(args: DeviceArgs) -> Result<()> {
    if !args.local {
        let remote = match args.query.client() {
            Ok(client) => client.device().await.ok(),
            Err(_) => None,
        };
        if let Some(view) = remote {
            return print_out(args.query.json, &view, || {
                crate::client::render::render_device(&view)
            });
        }
        if !args.query.json {
            eprintln!("no running node answered; sensing this machine locally");
        }
    }
    let settings = args.query.select.settings(ConfigLayer {
        simulate: args.simulate.layer(),
        ..ConfigLayer::default()
    })?;
    let mut monitor = DeviceMonitor::new(&settings.data_dir, settings.simulate.clone());
    let _ = monitor.pass(crate::runtime::clock::system_wall_ms());
    // CPU load is the difference of two readings; give it a moment.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let view = monitor.pass(crate::runtime::clock::system_wall_ms());
    print_out(args.query.json, &view, || {
        crate::client::render::render_device(&view)
    })
}
