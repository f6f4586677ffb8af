//! Command-line interface: the only place that reads arguments and prints
//! for humans.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::{Parser, Subcommand};
use zeroize::Zeroizing;

mod chat;
mod client;
mod daemon;
mod demo;
mod tui;

/// meshchat: peer-to-peer end-to-end encrypted chat.
///
/// `init` once, then `run` the daemon; the other commands talk to it.
/// Every flag has an environment twin (shown in each command's help).
/// Exit codes: 0 success, 1 failure (the message says why), 2 bad usage or
/// configuration, 3 no daemon running for the data directory.
#[derive(Debug, Parser)]
#[command(name = "meshchat", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create this device's keystore and identity (asks for a passphrase on
    /// a terminal; else from --passphrase-file or MESHCHAT_PASSPHRASE).
    Init(daemon::InitArgs),
    /// Show this device's invite code (and a QR code of it).
    Id(client::IdArgs),
    /// Run the daemon: the node and its local API, until SIGINT or SIGTERM.
    Run(Box<daemon::RunArgs>),
    /// Add, list, verify or remove contacts; accept or decline requests.
    #[command(subcommand)]
    Contacts(client::ContactsCmd),
    /// This account's devices: list them, or name this one (contacts see
    /// the name).
    #[command(subcommand)]
    Devices(client::DevicesCmd),
    /// Group chats: create, add, remove, rename, role, leave, list, send.
    #[command(subcommand)]
    Group(client::GroupCmd),
    /// Write a message to a contact.
    Send(client::SendArgs),
    /// Show a conversation, newest page first.
    History(client::HistoryArgs),
    /// Save the file a message carries (sent with `send --file`).
    Save(client::SaveArgs),
    /// The terminal chat: conversations, messages with receipt ticks, a
    /// line to type in (a client of the running daemon).
    Chat(client::PlainArgs),
    /// List conversations with unread counts.
    Chats(client::PlainArgs),
    /// Mark a conversation read (the contact gets a read receipt).
    Read(client::ReadArgs),
    /// Delete every message of a conversation from this device, with the
    /// files they carried (the contact or group stays).
    Clear(client::ClearArgs),
    /// Delete one message (and its file) from this device.
    Delete(client::DeleteArgs),
    /// Make a chat temporary (messages disappear a number of seconds after
    /// they are sent, on every device and relay), or `off` to keep them.
    Temporary(client::TemporaryArgs),
    /// Peers, addresses, presence and the queue.
    Status(client::PlainArgs),
    /// Export a conversation (decrypted JSON) or back up the whole store
    /// (encrypted).
    Export(client::ExportArgs),
    /// Print the daemon's events as JSON lines until interrupted.
    Events(client::PlainArgs),
    /// Three devices and a relay in this process, on 127.0.0.1 only: a
    /// short narrated conversation across the mesh and through the relay.
    Demo,
    /// Run a relay: hold sealed mail for offline devices, relay connections
    /// for peers behind NAT. Runs until SIGINT or SIGTERM.
    Relay(Box<RelayArgs>),
}

/// The keystore's file name in a data directory.
const KEYSTORE: &str = "keystore";

/// `--data-dir`, shared by the device's commands.
#[derive(Debug, Clone, clap::Args)]
struct DirArg {
    /// The device's data directory. Default: $XDG_DATA_HOME/meshchat, or
    /// ~/.local/share/meshchat.
    #[arg(long, env = "MESHCHAT_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

impl DirArg {
    fn resolve(&self) -> Result<PathBuf, CliError> {
        if let Some(d) = &self.data_dir {
            return Ok(d.clone());
        }
        let base = match std::env::var_os("XDG_DATA_HOME") {
            Some(x) if !x.is_empty() => PathBuf::from(x),
            _ => match std::env::var_os("HOME") {
                Some(h) if !h.is_empty() => PathBuf::from(h).join(".local/share"),
                _ => {
                    return Err(CliError::usage(anyhow!(
                        "no data directory: pass --data-dir or set MESHCHAT_DATA_DIR"
                    )));
                }
            },
        };
        Ok(base.join("meshchat"))
    }
}

/// `--json`, for the commands that print results.
#[derive(Debug, Clone, clap::Args)]
struct OutArg {
    /// Print JSON for scripts instead of text.
    #[arg(long, env = "MESHCHAT_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    json: bool,
}

/// Where a passphrase comes from.
#[derive(Debug, Clone, clap::Args)]
struct PassArgs {
    /// A file holding the keystore's passphrase (else MESHCHAT_PASSPHRASE,
    /// else a prompt on the terminal).
    #[arg(long, env = "MESHCHAT_PASSPHRASE_FILE")]
    passphrase_file: Option<PathBuf>,
}

impl PassArgs {
    /// The passphrase; on a terminal, asked for (twice when `confirm`).
    /// Wiped from memory when dropped: callers drop it once the keystore
    /// is open.
    fn read(&self, confirm: bool) -> Result<Zeroizing<Vec<u8>>> {
        if self.passphrase_file.is_some() || std::env::var_os("MESHCHAT_PASSPHRASE").is_some() {
            return read_passphrase(self.passphrase_file.as_deref());
        }
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "no passphrase: pass --passphrase-file or set MESHCHAT_PASSPHRASE (no terminal to ask on)"
            );
        }
        let first = Zeroizing::new(
            rpassword::prompt_password("Passphrase: ").context("reading the passphrase")?,
        );
        if confirm {
            let again = Zeroizing::new(
                rpassword::prompt_password("Again: ").context("reading the passphrase")?,
            );
            anyhow::ensure!(
                first == again,
                "the two passphrases differ; nothing changed"
            );
        }
        anyhow::ensure!(!first.is_empty(), "the passphrase is empty");
        Ok(Zeroizing::new(first.as_bytes().to_vec()))
    }
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
struct CliError {
    code: u8,
    error: anyhow::Error,
}

impl CliError {
    fn failed(error: anyhow::Error) -> Self {
        Self { code: 1, error }
    }
    fn usage(error: anyhow::Error) -> Self {
        Self {
            code: EXIT_CONFIG,
            error,
        }
    }
    fn no_daemon(error: anyhow::Error) -> Self {
        Self {
            code: EXIT_NO_DAEMON,
            error,
        }
    }
    fn not_that_far(error: anyhow::Error) -> Self {
        Self {
            code: EXIT_NOT_THAT_FAR,
            error,
        }
    }
}

/// Prints one JSON value on one line.
fn print_json(v: &impl serde::Serialize) {
    use std::io::Write;
    match serde_json::to_string(v) {
        // A closed stdout (`| head`) is not worth a panic.
        Ok(s) => {
            let _ = writeln!(std::io::stdout(), "{s}");
        }
        Err(e) => eprintln!("meshchat: {e}"),
    }
}

/// `YYYY-MM-DD HH:MM` (UTC) of a Unix time.
fn utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
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
    #[arg(long, env = "MESHCHAT_RELAY_NO_ADVERTISE", value_parser = clap::builder::BoolishValueParser::new())]
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

/// Exit codes: 0 success, 1 failure at run time, 2 bad usage or config,
/// 3 no daemon running, 4 a message not as far as `send --wait` asked.
const EXIT_CONFIG: u8 = 2;
/// See [`EXIT_CONFIG`].
const EXIT_NO_DAEMON: u8 = 3;
/// `send --wait`: the message was written and stays queued, but did not
/// get as far as asked in time (or expired): not "nothing was changed".
const EXIT_NOT_THAT_FAR: u8 = 4;

/// Entry point used by `main.rs`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo => {
            // The narration is the output; logs only when something is wrong.
            init_logs(
                crate::relay::operator::LogFormat::Text,
                "warn,libp2p_kad=error",
            );
            demo::run().map_err(CliError::failed)
        }
        Command::Relay(args) => return relay(*args),
        Command::Init(args) => daemon::init(args),
        Command::Run(args) => daemon::run(*args),
        Command::Id(args) => client::id(args),
        Command::Contacts(cmd) => client::contacts(cmd),
        Command::Devices(cmd) => client::devices(cmd),
        Command::Group(cmd) => client::group(cmd),
        Command::Send(args) => client::send(args),
        Command::History(args) => client::history(args),
        Command::Save(args) => client::save(args),
        Command::Chat(args) => chat::run(args),
        Command::Chats(args) => client::chats(args),
        Command::Read(args) => client::read(args),
        Command::Clear(args) => client::clear(args),
        Command::Delete(args) => client::delete(args),
        Command::Temporary(args) => client::temporary(args),
        Command::Status(args) => client::status(args),
        Command::Events(args) => client::events(args),
        Command::Export(args) => client::export(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshchat: {:#}", e.error);
            ExitCode::from(e.code)
        }
    }
}

/// Logs go to stderr, filtered by `MESHCHAT_LOG` (else `default`).
fn init_logs(format: crate::relay::operator::LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHCHAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
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
    init_logs(resolved.log_format, "info");
    let run = || -> Result<()> {
        let key = open_keystore(
            &resolved.data_dir,
            &read_passphrase(args.passphrase_file.as_deref())?,
        )?;
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
/// `MESHCHAT_PASSPHRASE`. A file that others may read is warned about.
fn read_passphrase(file: Option<&std::path::Path>) -> Result<Zeroizing<Vec<u8>>> {
    let mut p = Zeroizing::new(match file {
        Some(f) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(m) = std::fs::metadata(f)
                    && m.permissions().mode() & 0o077 != 0
                {
                    // In the logs when they are set up (the daemon's and
                    // the relay's may be JSON lines), else on stderr.
                    if tracing::dispatcher::has_been_set() {
                        tracing::warn!(
                            file = %f.display(),
                            "the passphrase file can be read by others than its owner (chmod 600 it)"
                        );
                    } else {
                        eprintln!(
                            "meshchat: warning: {} can be read by others than its owner (chmod 600 it)",
                            f.display()
                        );
                    }
                }
            }
            std::fs::read(f).with_context(|| format!("reading {}", f.display()))?
        }
        None => match std::env::var_os("MESHCHAT_PASSPHRASE") {
            Some(v) => v.into_encoded_bytes(),
            None => {
                anyhow::bail!("no passphrase: pass --passphrase-file or set MESHCHAT_PASSPHRASE")
            }
        },
    });
    while p.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        p.pop();
    }
    anyhow::ensure!(!p.is_empty(), "the passphrase is empty");
    Ok(p)
}

/// Unlocks `<data dir>/keystore`, creating it (and the directory, owner
/// only) on first start.
fn open_keystore(dir: &std::path::Path, passphrase: &[u8]) -> Result<crate::crypto::DataKey> {
    use crate::crypto::Keystore;
    let path = dir.join(KEYSTORE);
    if path.exists() {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let ks = Keystore::from_bytes(&bytes).context("the keystore is damaged")?;
        return ks
            .unlock(passphrase)
            .context("wrong passphrase (or a damaged keystore)");
    }
    create_keystore(dir, passphrase)
}

/// Makes `<data dir>/keystore` (and the directory, owner only); fails if
/// one is there already, even one made meanwhile.
fn create_keystore(dir: &std::path::Path, passphrase: &[u8]) -> Result<crate::crypto::DataKey> {
    use crate::crypto::{KdfParams, Keystore};
    let path = dir.join(KEYSTORE);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    let (ks, key) = Keystore::create(passphrase, KdfParams::DEFAULT, &mut rand::rng())
        .context("creating the keystore")?;
    let bytes = ks.to_bytes();
    crate::store::write_private_new(&path, |w| std::io::Write::write_all(w, &bytes))
        .with_context(|| format!("writing {}", path.display()))?;
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
