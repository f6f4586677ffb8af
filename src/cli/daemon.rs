//! `meshchat init` and `meshchat run`: the device's keys and its daemon.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

use super::CliError;
use crate::api::{self, Api};
use crate::node::{Node, NodeConfig, NodeEvent};

/// The node's store inside the data directory.
pub(super) const NODE_DIR: &str = "node";
/// Held (locked) by the running daemon.
const LOCK: &str = "daemon.lock";
/// Longest wait for the first listen address before saying "ready".
const LISTEN_WAIT: Duration = Duration::from_secs(10);
/// Longest a graceful stop takes.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// `meshchat init`.
#[derive(Debug, clap::Args)]
pub(super) struct InitArgs {
    #[command(flatten)]
    dir: super::DirArg,
    #[command(flatten)]
    pass: super::PassArgs,
    #[command(flatten)]
    out: super::OutArg,
}

/// `meshchat run`.
#[derive(Debug, clap::Args)]
pub(super) struct RunArgs {
    #[command(flatten)]
    dir: super::DirArg,
    #[command(flatten)]
    pass: super::PassArgs,
    #[command(flatten)]
    out: super::OutArg,
    /// Listen address, a multiaddr (repeatable; comma-separated in the
    /// environment). Default: TCP and QUIC on every interface, any port.
    #[arg(long, env = "MESHCHAT_LISTEN", value_delimiter = ',')]
    listen: Vec<Multiaddr>,
    /// A relay that holds our mail while we are away, `…/p2p/<peer id>`
    /// (repeatable). None: relays are looked up in the DHT.
    #[arg(long, env = "MESHCHAT_RELAYS", value_delimiter = ',')]
    relay: Vec<Multiaddr>,
    /// Kademlia bootstrap peer, `…/p2p/<peer id>` (repeatable).
    #[arg(long, env = "MESHCHAT_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<Multiaddr>,
    /// Do not look for peers on the local network (mDNS).
    #[arg(long, env = "MESHCHAT_NO_MDNS", value_parser = clap::builder::BoolishValueParser::new())]
    no_mdns: bool,
    /// Show contacts nothing about whether we are online.
    #[arg(long, env = "MESHCHAT_HIDE_PRESENCE", value_parser = clap::builder::BoolishValueParser::new())]
    hide_presence: bool,
    /// Most megabytes of files (received and sent) this device keeps
    /// before it stops fetching other people's files until some are
    /// deleted (at least 64: room for the largest file).
    #[arg(long, env = "MESHCHAT_MEDIA_BUDGET_MB", default_value_t = crate::node::DEFAULT_MEDIA_BUDGET >> 20,
        value_parser = clap::value_parser!(u64).range(64..))]
    media_budget_mb: u64,
    /// Also serve the local API over HTTP and WebSocket on this loopback
    /// address (`127.0.0.1:PORT`), with the bearer token in
    /// `<data dir>/api-token`.
    #[arg(long, env = "MESHCHAT_HTTP")]
    http: Option<std::net::SocketAddr>,
    /// `text` or `json` logs (on stderr).
    #[arg(long, env = "MESHCHAT_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

/// Creates the keystore and the device's identity.
pub(super) fn init(args: InitArgs) -> Result<(), CliError> {
    let dir = args.dir.resolve()?;
    if dir.join(super::KEYSTORE).exists() {
        return Err(CliError::failed(anyhow!(
            "{} is already initialised (it holds a keystore); nothing changed",
            dir.display()
        )));
    }
    let passphrase = args.pass.read(true).map_err(CliError::failed)?;
    let key = super::create_keystore(&dir, &passphrase).map_err(CliError::failed)?;
    drop(passphrase);
    let identity = (|| -> Result<_> {
        let store = std::sync::Arc::new(
            crate::store::Store::open(dir.join(NODE_DIR), &key).context("creating the store")?,
        );
        let engine = crate::node::engine::Engine::open(store, crate::node::now_secs())
            .context("creating the identity")?;
        engine.store().flush().context("writing the identity")?;
        Ok(engine.identity().public().clone())
    })()
    .map_err(|e| {
        // The keystore just made (exclusively: nobody else's) is taken
        // back, so that `init` can simply be run again.
        let _ = std::fs::remove_file(dir.join(super::KEYSTORE));
        CliError::failed(e)
    })?;
    let peer = identity.peer_id().map_err(|e| CliError::failed(e.into()))?;
    let fingerprint = crate::crypto::fingerprint(&identity);
    if args.out.json {
        super::print_json(&serde_json::json!({
            "data_dir": dir,
            "peer_id": peer.to_string(),
            "identity": api::proto::hex(&identity.signing),
            "fingerprint": fingerprint,
        }));
    } else {
        println!("Created a new identity in {}", dir.display());
        println!("  peer id:     {peer}");
        println!("  fingerprint: {fingerprint}");
        println!("Start the daemon with `meshchat run`, then share `meshchat id`.");
    }
    Ok(())
}

/// Runs the node and its local API until SIGINT or SIGTERM.
pub(super) fn run(args: RunArgs) -> Result<(), CliError> {
    let dir = args.dir.resolve()?;
    let format = match args.log_format.as_str() {
        "text" => crate::relay::operator::LogFormat::Text,
        "json" => crate::relay::operator::LogFormat::Json,
        other => {
            return Err(CliError::usage(anyhow!(
                "--log-format is text or json, not {other}"
            )));
        }
    };
    for (what, list) in [("--relay", &args.relay), ("--bootstrap", &args.bootstrap)] {
        if let Some(a) = list
            .iter()
            .find(|a| !matches!(a.iter().last(), Some(Protocol::P2p(_))))
        {
            return Err(CliError::usage(anyhow!(
                "{what} {a}: the address must end in /p2p/<peer id>"
            )));
        }
    }
    if let Some(a) = args.http
        && !a.ip().is_loopback()
    {
        return Err(CliError::usage(anyhow!(
            "--http {a}: the HTTP API listens on a loopback address only"
        )));
    }
    if !dir.join(super::KEYSTORE).exists() {
        return Err(CliError::failed(anyhow!(
            "{} is not initialised: run `meshchat init` first",
            dir.display()
        )));
    }
    let _lock = lock(&dir).map_err(CliError::failed)?;
    super::init_logs(format, "info,libp2p_kad=warn");
    let passphrase = args.pass.read(false).map_err(CliError::failed)?;
    let key = super::open_keystore(&dir, &passphrase).map_err(CliError::failed)?;
    drop(passphrase);
    let mut cfg = NodeConfig::new(dir.join(NODE_DIR), key);
    if !args.listen.is_empty() {
        cfg.net.listen = args.listen.clone();
    }
    cfg.net.mdns = !args.no_mdns;
    cfg.net.bootstrap = args
        .bootstrap
        .iter()
        .filter_map(|a| match a.iter().last() {
            Some(Protocol::P2p(peer)) => Some((peer, a.clone())),
            _ => None,
        })
        .collect();
    cfg.relays = args.relay.clone();
    cfg.presence.hidden = args.hide_presence;
    cfg.media_budget = args.media_budget_mb.saturating_mul(1 << 20);
    let runtime = tokio::runtime::Runtime::new()
        .context("starting the runtime")
        .map_err(CliError::failed)?;
    runtime
        .block_on(serve(dir, cfg, args.http, args.out.json))
        .map_err(CliError::failed)
}

async fn serve(
    dir: PathBuf,
    cfg: NodeConfig,
    http: Option<std::net::SocketAddr>,
    json: bool,
) -> Result<()> {
    let (node, events) = Node::spawn(cfg).await.context("starting the node")?;
    let socket = dir.join(api::SOCKET);
    // Anything that fails from here on still stops the node cleanly
    // (peers told, store flushed) and leaves no socket behind.
    let started = async {
        let api = Api::new(node.clone(), events).await;
        // Say "ready" once the node listens somewhere (its invite names it).
        let mut sub = api.subscribe();
        let mut listen = node.listen_addrs().await?;
        let deadline = tokio::time::Instant::now() + LISTEN_WAIT;
        while listen.is_empty() {
            match tokio::time::timeout_at(deadline, sub.recv()).await {
                Ok(Ok(NodeEvent::Listening { addr })) => listen.push(addr),
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(_)) => bail!("the node stopped while starting"),
                Err(_) => bail!("the node listens nowhere after {LISTEN_WAIT:?}"),
            }
        }
        drop(sub);
        let listener = api::server::bind(&socket)
            .with_context(|| format!("serving the local API at {}", socket.display()))?;
        let http = match http {
            Some(addr) => {
                let token = api::http::token(&dir).context("making the API token")?;
                let (bound, task) = api::http::serve(addr, api.clone(), token)
                    .await
                    .with_context(|| format!("serving the HTTP API on {addr}"))?;
                Some((bound, task))
            }
            None => None,
        };
        // Signals are caught from here on: one sent right after the ready
        // line still stops the node gracefully.
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("listening for SIGTERM")?;
        let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("listening for SIGINT")?;
        Ok::<_, anyhow::Error>((api, listen, listener, http, term, int))
    }
    .await;
    let (api, listen, listener, http, mut term, mut int) = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&socket);
            if let Err(stop) = node.shutdown(STOP_WAIT).await {
                tracing::warn!(error = %stop, "the node did not stop in time");
            }
            return Err(e);
        }
    };
    let server = tokio::spawn(api::server::serve(listener, api));
    let info = node.info().clone();
    let token_file = dir.join(api::http::TOKEN_FILE);
    if json {
        super::print_json(&serde_json::json!({
            "ready": true,
            "peer_id": info.peer_id.to_string(),
            "socket": socket,
            "listen": listen.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "http": http.as_ref().map(|(a, _)| a.to_string()),
            "token_file": http.as_ref().map(|_| &token_file),
        }));
    } else {
        println!("meshchat is running as {}", info.peer_id);
        for a in &listen {
            println!("  listening on {a}");
        }
        println!("  local API at {}", socket.display());
        if let Some((a, _)) = &http {
            println!(
                "  HTTP API at http://{a}/v1 (bearer token in {})",
                token_file.display()
            );
        }
    }
    let stopped_alone = tokio::select! {
        _ = int.recv() => { tracing::info!("SIGINT: stopping"); false }
        _ = term.recv() => { tracing::info!("SIGTERM: stopping"); false }
        _ = node.wait_stopped(Duration::MAX) => true,
    };
    server.abort();
    if let Some((_, task)) = http {
        task.abort();
    }
    let _ = std::fs::remove_file(&socket);
    if stopped_alone {
        bail!("the node stopped on its own (see the log)");
    }
    node.shutdown(STOP_WAIT)
        .await
        .context("the node did not stop in time")?;
    tracing::info!("stopped");
    Ok(())
}

/// Takes the data directory's daemon lock, or says who holds it.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(anyhow!(
            "another meshchat daemon is running on {}",
            dir.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow!(e).context(format!("locking {}", path.display())))
        }
    }
}
