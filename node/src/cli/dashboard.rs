//! `fogmesh dashboard` and `fogmesh testnet dashboard`: the address of the page, with the
//! token it needs, printed and optionally opened in the person's browser.

use super::*;
use crate::dashboard::testnet::{page_url, page_url_with_code};

#[derive(Debug, Args)]
pub(crate) struct DashboardArgs {
    #[command(flatten)]
    query: QueryArgs,
    /// Open the page in the default browser too.
    #[arg(long)]
    open: bool,
}

/// `fogmesh dashboard`: checks the node answers, then prints (and opens) its page.
pub(crate) async fn dashboard(args: DashboardArgs) -> Result<()> {
    let client = args.query.client()?;
    // An address that does not answer is better reported here than as a blank page.
    let status = client.status().await?;
    let url = page_url(client.addr(), client.token());
    if client.token().is_none() {
        eprintln!(
            "no token for this node: the page opens read-only (give --api-token, or use --data-dir)"
        );
    }
    let answer = serde_json::json!({
        "url": url,
        "peer_id": status.peer_id,
        "read_only": client.token().is_none(),
    });
    print_out(args.query.json, &answer, || url.clone())?;
    if args.open {
        // A browser keeps its arguments readable to every local user: give it a one-time
        // code, not the token.
        let to_open = match client.signin_code().await {
            Ok(code) => page_url_with_code(client.addr(), &code),
            Err(_) => page_url(client.addr(), None),
        };
        open_in_browser(&to_open);
    }
    Ok(())
}

/// Asks the desktop to open `url`; says so when it cannot (a server, a container): the
/// printed address still works from a browser on this machine.
pub(crate) fn open_in_browser(url: &str) {
    let opener: &[&str] = if cfg!(target_os = "macos") {
        &["open"]
    } else if cfg!(windows) {
        &["cmd", "/C", "start", ""]
    } else {
        &["xdg-open"]
    };
    let Some((program, args)) = opener.split_first() else {
        return;
    };
    let spawned = std::process::Command::new(program)
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        eprintln!("could not open a browser ({program}: {e}); open the address above by hand");
    }
}

/// `fogmesh testnet dashboard`: serves the page for a whole testnet until Ctrl-C.
pub(crate) async fn testnet_dashboard(dir: &std::path::Path, port: u16, open: bool) -> Result<()> {
    let server = crate::dashboard::testnet::start(dir, port).await?;
    let url = server.url();
    print_line(&url)?;
    eprintln!(
        "serving the dashboard of the testnet in {}; Ctrl-C stops",
        dir.display()
    );
    if open {
        open_in_browser(&url);
    }
    let _ = tokio::signal::ctrl_c().await;
    server.stop().await;
    Ok(())
}
