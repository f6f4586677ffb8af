//! Command-line interface: the only place that reads arguments and prints
//! for humans.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::crypto::{
    ContentKind, DeviceIdentity, Envelope, MailboxKey, PrekeyMessage, PrekeyStore, SealCache,
    SealedContent, SenderKey, SenderKeyReceiver, Session, initiate, open, respond, safety_number,
    seal,
};

/// meshchat: peer-to-peer end-to-end encrypted chat.
#[derive(Debug, Parser)]
#[command(name = "meshchat", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Walk through a conversation between two in-process devices and show
    /// what each party — and a relay in between — can see.
    Demo,
    /// Run a relay: hold sealed mail for offline devices, relay connections
    /// for peers behind NAT. Runs until SIGINT or SIGTERM.
    Relay(Box<RelayArgs>),
}

/// `meshchat relay`: every flag has an environment twin; flags win over
/// the config file, the file over the defaults.
#[derive(Debug, clap::Args)]
struct RelayArgs {
    /// TOML config file (see docs/relay-operators.md).
    #[arg(long, env = "MESHCHAT_RELAY_CONFIG")]
    config: Option<PathBuf>,
    /// Where the relay keeps its store and keystore.
    #[arg(long, env = "MESHCHAT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A file holding the passphrase of the relay's keystore (created on
    /// first start).
    #[arg(long, env = "MESHCHAT_PASSPHRASE_FILE")]
    passphrase_file: Option<PathBuf>,
    /// Listen address, a multiaddr (repeatable; comma-separated in the
    /// environment). Default: TCP and QUIC on every interface, any port.
    #[arg(long, env = "MESHCHAT_RELAY_LISTEN", value_delimiter = ',')]
    listen: Vec<String>,
    /// Public address others reach this relay at (repeatable).
    #[arg(long, env = "MESHCHAT_RELAY_EXTERNAL", value_delimiter = ',')]
    external: Vec<String>,
    /// Kademlia bootstrap peer, `…/p2p/<peer id>` (repeatable).
    #[arg(long, env = "MESHCHAT_RELAY_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<String>,
    /// Serve Prometheus metrics on this host:port (`off` for none).
    #[arg(long, env = "MESHCHAT_RELAY_METRICS")]
    metrics: Option<String>,
    /// `text` or `json`.
    #[arg(long, env = "MESHCHAT_LOG_FORMAT")]
    log_format: Option<String>,
    /// Do not announce this relay in the DHT.
    #[arg(long, env = "MESHCHAT_RELAY_NO_ADVERTISE")]
    no_advertise: bool,
    /// Longest an envelope is held, in days.
    #[arg(long, env = "MESHCHAT_RELAY_RETENTION_DAYS")]
    retention_days: Option<u64>,
    /// Most envelopes held per mailbox.
    #[arg(long, env = "MESHCHAT_RELAY_MAX_MAILBOX_ENVELOPES")]
    max_mailbox_envelopes: Option<u64>,
    /// Most bytes held per mailbox.
    #[arg(long, env = "MESHCHAT_RELAY_MAX_MAILBOX_BYTES")]
    max_mailbox_bytes: Option<u64>,
    /// Largest envelope accepted, in bytes.
    #[arg(long, env = "MESHCHAT_RELAY_MAX_ENVELOPE_BYTES")]
    max_envelope_bytes: Option<usize>,
    /// Most envelope bytes held in all.
    #[arg(long, env = "MESHCHAT_RELAY_DISK_BUDGET_BYTES")]
    disk_budget_bytes: Option<u64>,
    /// Most mailboxes whose prekey bundles are held.
    #[arg(long, env = "MESHCHAT_RELAY_MAX_PREKEY_BUNDLES")]
    max_prekey_bundles: Option<u64>,
}

/// Exit codes: 0 success, 1 failure at run time, 2 bad usage or config.
const EXIT_CONFIG: u8 = 2;

/// Entry point used by `main.rs`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo => {
            init_logs(crate::relay::operator::LogFormat::Text);
            demo()
        }
        Command::Relay(args) => return relay(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshchat: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `MESHCHAT_LOG` (default `info`).
fn init_logs(format: crate::relay::operator::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHCHAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        crate::relay::operator::LogFormat::Text => builder.try_init(),
        crate::relay::operator::LogFormat::Json => builder.json().try_init(),
    };
}

fn relay(args: RelayArgs) -> ExitCode {
    use crate::relay::operator::{FileConfig, Overrides, Resolved};
    let file = match &args.config {
        Some(path) => match FileConfig::load(path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("meshchat relay: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => FileConfig::default(),
    };
    let flags = Overrides {
        data_dir: args.data_dir,
        listen: args.listen,
        external: args.external,
        bootstrap: args.bootstrap,
        metrics: args.metrics,
        log_format: args.log_format,
        no_advertise: args.no_advertise,
        retention_days: args.retention_days,
        max_mailbox_envelopes: args.max_mailbox_envelopes,
        max_mailbox_bytes: args.max_mailbox_bytes,
        max_envelope_bytes: args.max_envelope_bytes,
        disk_budget_bytes: args.disk_budget_bytes,
        max_prekey_bundles: args.max_prekey_bundles,
    };
    let resolved = match Resolved::new(flags, file) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meshchat relay: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logs(resolved.log_format);
    let run = || -> Result<()> {
        let passphrase = read_passphrase(args.passphrase_file.as_deref())?;
        let key = open_keystore(&resolved.data_dir, &passphrase)?;
        let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
        runtime.block_on(run_relay(resolved, key))
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshchat relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The passphrase from a file (trailing newline dropped) or
/// `MESHCHAT_PASSPHRASE`.
fn read_passphrase(file: Option<&std::path::Path>) -> Result<Vec<u8>> {
    let mut p = match file {
        Some(f) => std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
        None => match std::env::var_os("MESHCHAT_PASSPHRASE") {
            Some(v) => v.into_encoded_bytes(),
            None => {
                anyhow::bail!("no passphrase: pass --passphrase-file or set MESHCHAT_PASSPHRASE")
            }
        },
    };
    while p.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        p.pop();
    }
    anyhow::ensure!(!p.is_empty(), "the passphrase is empty");
    Ok(p)
}

/// Unlocks `<data dir>/keystore`, creating it (and the directory, owner
/// only) on first start.
fn open_keystore(dir: &std::path::Path, passphrase: &[u8]) -> Result<crate::crypto::DataKey> {
    use crate::crypto::{KdfParams, Keystore};
    let path = dir.join("keystore");
    if path.exists() {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let ks = Keystore::from_bytes(&bytes).context("the keystore is damaged")?;
        return ks
            .unlock(passphrase)
            .context("wrong passphrase (or a damaged keystore)");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    let (ks, key) = Keystore::create(passphrase, KdfParams::DEFAULT, &mut rand::rng())
        .context("creating the keystore")?;
    let tmp = dir.join("keystore.tmp");
    std::fs::write(&tmp, ks.to_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(key)
}

async fn run_relay(r: crate::relay::operator::Resolved, key: crate::crypto::DataKey) -> Result<()> {
    use crate::relay::{Relay, RelayConfig};
    let mut cfg = RelayConfig::new(&r.data_dir, key);
    cfg.net = r.net;
    cfg.external = r.external;
    cfg.limits = r.limits;
    cfg.advertise = r.advertise;
    // Without a declared public address, the listen addresses are it (a
    // LAN or a host with a public interface).
    cfg.announce_listen = cfg.external.is_empty();
    let handle = Relay::spawn(cfg).await.context("starting the relay")?;
    tracing::info!(peer_id = %handle.peer_id(), "relay running");
    let metrics = match r.metrics {
        Some(addr) => {
            let (bound, task) = crate::relay::http::serve_metrics(addr, handle.metrics().clone())
                .await
                .with_context(|| format!("serving metrics on {addr}"))?;
            tracing::info!(%bound, "serving metrics at /metrics");
            Some(task)
        }
        None => None,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = handle.wait_stopped() => anyhow::bail!("the relay stopped on its own (see the log)"),
    }
    handle.shutdown(Duration::from_secs(10)).await;
    if let Some(t) = metrics {
        t.abort();
    }
    Ok(())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn short(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        + "…"
}

fn demo() -> Result<()> {
    let mut rng = rand::rng();
    let t = now();
    println!("meshchat crypto walk-through (all in this process, nothing on the network)\n");

    let alice = DeviceIdentity::generate(&mut rng);
    let bob = DeviceIdentity::generate(&mut rng);
    println!("alice's device  {}", alice.peer_id()?);
    println!("bob's device    {}", bob.peer_id()?);
    println!(
        "safety number   {}\n",
        safety_number(alice.public(), bob.public())
    );

    // Bob publishes a bundle (normally to his relays) and goes offline.
    let bob_mailbox = MailboxKey::generate(&mut rng);
    let mut bob_prekeys = PrekeyStore::new(&bob, t, &mut rng);
    bob_prekeys.generate_one_time(&bob, 10, &mut rng);
    let bundle = bob_prekeys.bundle(&bob, bob_mailbox.id().0, &[], t, true)?;
    println!(
        "bob's prekey bundle: {} bytes, signed; mailbox {}",
        bundle.to_bytes().len(),
        short(&bob_mailbox.id().0)
    );

    // Alice starts a session from the bundle and seals her first message.
    let verified = bundle.verify().context("bundle signature")?;
    let (x3dh, initial, spk) = initiate(&alice, &verified, &mut rng)?;
    let mut alice_session = Session::initiator(&x3dh, spk, Some(initial), &mut rng)?;
    let text = "Hi Bob — this crossed a relay that cannot read it.";
    let ratchet = alice_session.encrypt(text.as_bytes())?;
    let body = PrekeyMessage::new(initial, ratchet.to_bytes()).to_bytes();
    let mut alice_cache = SealCache::default();
    let sealed = seal(
        &alice,
        &bob.public().dh,
        &SealedContent::new(ContentKind::Prekey, body),
        &mut alice_cache,
        &mut rng,
    )?;
    let mut envelope_id = [0u8; 16];
    rand::Rng::fill_bytes(&mut rng, &mut envelope_id);
    let envelope = Envelope::new(bob_mailbox.id().0, envelope_id, t + 14 * 86_400, sealed);
    let wire = envelope.to_bytes();

    println!("\nwhat a relay holding the envelope sees:");
    println!("  mailbox id  {}", short(&envelope.mailbox_id));
    println!("  envelope id {}", short(&envelope.envelope_id));
    println!("  expires at  {} (unix)", envelope.expires_at);
    println!(
        "  size        {} bytes (padded bucket; a 2-byte message looks the same)",
        wire.len()
    );
    let readable = wire.windows(6).any(|w| w == &text.as_bytes()[..6]);
    println!("  plaintext visible: {readable}; sender visible: no");

    // Bob comes back, opens it, answers.
    let received = Envelope::from_bytes(&wire)?;
    let mut bob_cache = SealCache::default();
    let opened = open(&bob, &received.sealed, &mut bob_cache)?;
    let pkm = PrekeyMessage::from_bytes(&opened.content.body)?;
    let (x3dh_b, spk_secret) = respond(&bob, &bob_prekeys, &opened.sender, &pkm.initial)?;
    let mut bob_session = Session::responder(&x3dh_b, &spk_secret, Some(pkm.initial.ephemeral));
    let plain = bob_session.decrypt(
        &crate::crypto::RatchetMessage::from_bytes(&pkm.message)?,
        &mut rng,
    )?;
    if let Some(id) = pkm.initial.one_time_prekey_id {
        bob_prekeys.take_one_time(id)?;
    }
    println!(
        "\nbob opens it: sender {} says {:?}",
        opened.sender.peer_id()?,
        String::from_utf8_lossy(&plain)
    );

    // A few messages out of order, and a replay.
    let reply = bob_session.encrypt(b"Got it. Ratchet turned.")?;
    println!(
        "alice reads: {:?}",
        String::from_utf8_lossy(&alice_session.decrypt(&reply, &mut rng)?)
    );
    let m1 = alice_session.encrypt(b"one")?;
    let m2 = alice_session.encrypt(b"two")?;
    println!(
        "bob reads out of order: {:?} then {:?}",
        String::from_utf8_lossy(&bob_session.decrypt(&m2, &mut rng)?),
        String::from_utf8_lossy(&bob_session.decrypt(&m1, &mut rng)?)
    );
    match bob_session.decrypt(&m1, &mut rng) {
        Ok(_) => println!("replay accepted (this would be a bug)"),
        Err(e) => println!("replayed message refused: {e}"),
    }

    // Groups: one encryption for everyone.
    let gid = [7u8; 32];
    let mut alice_group = SenderKey::new(gid, t, &mut rng);
    let mut bob_view = SenderKeyReceiver::from_distribution(&alice_group.distribution());
    let g = alice_group.encrypt(b"hello group")?;
    println!(
        "\ngroup message ({} bytes) read by bob: {:?}",
        g.to_bytes().len(),
        String::from_utf8_lossy(&bob_view.decrypt(&g)?)
    );
    let rotated = alice_group.rotate(t, &mut rng);
    let mut rotated = rotated;
    let after = rotated.encrypt(b"after a member left")?;
    match bob_view.decrypt(&after) {
        Ok(_) => println!("old key still reads new messages (this would be a bug)"),
        Err(e) => println!("after rotation, a member without the new key: {e}"),
    }
    Ok(())
}
