//! What an operator writes: the relay's TOML file, and how it combines
//! with flags (flags and their environment twins win over the file, the
//! file over the defaults).
//!
//! ```toml
//! data_dir = "/var/lib/meshchat-relay"
//! listen = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]
//! external = ["/dns4/relay.example.org/tcp/4001"]
//! bootstrap = []
//! metrics = "127.0.0.1:9464"
//! log_format = "json"
//! advertise = true
//!
//! [limits]
//! retention_days = 14
//! max_mailbox_envelopes = 10000
//! max_mailbox_bytes = 67108864
//! max_envelope_bytes = 65868
//! disk_budget_bytes = 10737418240
//! max_prekey_bundles = 50000
//! deposits_per_second = 1000
//! deposit_kib_per_second = 16384
//! max_inbound_connections = 512
//! max_inbound_per_ip = 64
//!
//! [circuits]
//! max_reservations = 128
//! max_circuits = 16
//! max_circuit_duration_secs = 120
//! max_circuit_bytes = 131072
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;
use serde::Deserialize;

use super::service::Limits;
use crate::node::net::{NetConfig, RateLimit, RelayServerConfig};

/// Largest config file read.
const MAX_FILE: u64 = 1024 * 1024;

/// Errors in an operator's configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a relay.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its line.
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("{field}: {message}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// No data directory in flags, environment or file.
    #[error("no data directory: pass --data-dir, set MESHCHAT_DATA_DIR or data_dir in the file")]
    NoDataDir,
}

/// The relay's config file. Every field is optional; unknown fields are
/// an error (a typo must not silently fall back to a default).
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where the store lives.
    pub data_dir: Option<PathBuf>,
    /// Listen addresses (multiaddrs).
    pub listen: Option<Vec<String>>,
    /// Public addresses others reach this relay at.
    pub external: Option<Vec<String>>,
    /// Kademlia bootstrap peers (`…/p2p/<peer id>`).
    pub bootstrap: Option<Vec<String>>,
    /// Where to serve Prometheus metrics (`host:port`).
    pub metrics: Option<String>,
    /// `text` or `json`.
    pub log_format: Option<String>,
    /// Announce this relay in the DHT.
    pub advertise: Option<bool>,
    /// Mailbox limits.
    #[serde(default)]
    pub limits: FileLimits,
    /// Circuit-relay limits.
    #[serde(default)]
    pub circuits: FileCircuits,
}

/// `[limits]`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    /// Longest an envelope is held (days).
    pub retention_days: Option<u64>,
    /// Most envelopes per mailbox.
    pub max_mailbox_envelopes: Option<u64>,
    /// Most bytes per mailbox.
    pub max_mailbox_bytes: Option<u64>,
    /// Largest envelope.
    pub max_envelope_bytes: Option<usize>,
    /// Most envelope bytes held in all.
    pub disk_budget_bytes: Option<u64>,
    /// Most mailboxes whose prekeys are held.
    pub max_prekey_bundles: Option<u64>,
    /// Deposit requests per second per peer (bursts of twice this).
    pub deposits_per_second: Option<u32>,
    /// Deposited KiB per second per peer (bursts of four times this).
    pub deposit_kib_per_second: Option<u32>,
    /// Most established incoming connections.
    pub max_inbound_connections: Option<u32>,
    /// Most incoming connections from one IP address.
    pub max_inbound_per_ip: Option<u32>,
}

/// A relay's default [`NetConfig::max_inbound_per_ip`]: above a device's,
/// as a relay serves many users, some behind one carrier NAT.
pub const RELAY_MAX_INBOUND_PER_IP: u32 = 64;

/// `[circuits]`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCircuits {
    /// Reservations held at once.
    pub max_reservations: Option<usize>,
    /// Circuits open at once.
    pub max_circuits: Option<usize>,
    /// Longest a circuit stays open (seconds).
    pub max_circuit_duration_secs: Option<u64>,
    /// Most bytes per circuit.
    pub max_circuit_bytes: Option<u64>,
}

impl FileConfig {
    /// Reads and parses a config file (bounded in size).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read)?.len();
        if len > MAX_FILE {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: format!("{len} bytes; a relay config is at most {MAX_FILE}"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }
}

/// Settings from flags or environment; `None` leaves the file's value.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Overrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--listen` (repeatable).
    pub listen: Vec<String>,
    /// `--external` (repeatable).
    pub external: Vec<String>,
    /// `--bootstrap` (repeatable).
    pub bootstrap: Vec<String>,
    /// `--metrics`.
    pub metrics: Option<String>,
    /// `--log-format`.
    pub log_format: Option<String>,
    /// `--no-advertise`.
    pub no_advertise: bool,
    /// `--retention-days`.
    pub retention_days: Option<u64>,
    /// `--max-mailbox-envelopes`.
    pub max_mailbox_envelopes: Option<u64>,
    /// `--max-mailbox-bytes`.
    pub max_mailbox_bytes: Option<u64>,
    /// `--max-envelope-bytes`.
    pub max_envelope_bytes: Option<usize>,
    /// `--disk-budget-bytes`.
    pub disk_budget_bytes: Option<u64>,
    /// `--max-prekey-bundles`.
    pub max_prekey_bundles: Option<u64>,
}

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything `meshchat relay` runs with, resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// The network (with the circuit server's limits).
    pub net: NetConfig,
    /// Public addresses.
    pub external: Vec<Multiaddr>,
    /// Mailbox limits.
    pub limits: Limits,
    /// Metrics endpoint.
    pub metrics: Option<SocketAddr>,
    /// Log format.
    pub log_format: LogFormat,
    /// Announce in the DHT.
    pub advertise: bool,
}

fn addrs(field: &'static str, list: &[String]) -> Result<Vec<Multiaddr>, ConfigError> {
    list.iter()
        .map(|a| {
            a.parse().map_err(|e| ConfigError::Invalid {
                field,
                message: format!("{a:?}: {e}"),
            })
        })
        .collect()
}

fn pick<T>(flag: Option<T>, file: Option<T>, default: T) -> T {
    flag.or(file).unwrap_or(default)
}

impl Resolved {
    /// Combines flags (and their environment twins) over the file over
    /// the defaults, and checks every value.
    pub fn new(flags: Overrides, file: FileConfig) -> Result<Self, ConfigError> {
        let data_dir = flags
            .data_dir
            .or(file.data_dir)
            .ok_or(ConfigError::NoDataDir)?;
        let mut net = NetConfig::default();
        let listen = if !flags.listen.is_empty() {
            flags.listen
        } else {
            file.listen.unwrap_or_default()
        };
        if !listen.is_empty() {
            net.listen = addrs("listen", &listen)?;
        }
        let external = if !flags.external.is_empty() {
            flags.external
        } else {
            file.external.unwrap_or_default()
        };
        let external = addrs("external", &external)?;
        let bootstrap = if !flags.bootstrap.is_empty() {
            flags.bootstrap
        } else {
            file.bootstrap.unwrap_or_default()
        };
        for b in addrs("bootstrap", &bootstrap)? {
            let mut bare = b.clone();
            match bare.pop() {
                Some(libp2p::multiaddr::Protocol::P2p(peer)) => net.bootstrap.push((peer, bare)),
                _ => {
                    return Err(ConfigError::Invalid {
                        field: "bootstrap",
                        message: format!("{b} does not end in /p2p/<peer id>"),
                    });
                }
            }
        }
        let metrics = match flags.metrics.or(file.metrics) {
            None => None,
            Some(m) if m.is_empty() || m == "off" => None,
            Some(m) => Some(m.parse().map_err(|e| ConfigError::Invalid {
                field: "metrics",
                message: format!("{m:?}: {e} (expected host:port)"),
            })?),
        };
        let log_format = match flags
            .log_format
            .or(file.log_format)
            .as_deref()
            .unwrap_or("text")
        {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::Invalid {
                    field: "log_format",
                    message: format!("{other:?}: expected text or json"),
                });
            }
        };

        let d = Limits::default();
        let fl = file.limits;
        let retention_days = pick(flags.retention_days, fl.retention_days, 14);
        if retention_days == 0 {
            return Err(ConfigError::Invalid {
                field: "retention_days",
                message: "must be at least 1".into(),
            });
        }
        let max_envelope = pick(
            flags.max_envelope_bytes,
            fl.max_envelope_bytes,
            d.max_envelope,
        );
        if max_envelope > d.max_envelope {
            return Err(ConfigError::Invalid {
                field: "max_envelope_bytes",
                message: format!("at most {} (the protocol's limit)", d.max_envelope),
            });
        }
        let per_second = fl
            .deposits_per_second
            .unwrap_or(d.deposit_rate.per_second)
            .max(1);
        let kib = fl
            .deposit_kib_per_second
            .unwrap_or(d.deposit_kib_rate.per_second)
            .max(1);
        let limits = Limits {
            retention_secs: retention_days.saturating_mul(24 * 3600),
            max_count: pick(
                flags.max_mailbox_envelopes,
                fl.max_mailbox_envelopes,
                d.max_count,
            ),
            max_bytes: pick(flags.max_mailbox_bytes, fl.max_mailbox_bytes, d.max_bytes),
            max_envelope,
            disk_budget: pick(flags.disk_budget_bytes, fl.disk_budget_bytes, d.disk_budget),
            max_bundles: pick(
                flags.max_prekey_bundles,
                fl.max_prekey_bundles,
                d.max_bundles,
            ),
            deposit_rate: RateLimit {
                burst: per_second.saturating_mul(2),
                per_second,
            },
            deposit_kib_rate: RateLimit {
                burst: kib.saturating_mul(4),
                per_second: kib,
            },
            ..d
        };

        let c = RelayServerConfig::default();
        let fc = file.circuits;
        net.relay_server = Some(RelayServerConfig {
            max_reservations: fc.max_reservations.unwrap_or(c.max_reservations),
            max_circuits: fc.max_circuits.unwrap_or(c.max_circuits),
            max_circuit_duration: fc
                .max_circuit_duration_secs
                .map_or(c.max_circuit_duration, Duration::from_secs),
            max_circuit_bytes: fc.max_circuit_bytes.unwrap_or(c.max_circuit_bytes),
            ..c
        });
        net.serve_mailboxes = true;
        // Its clients are not its contacts; its own limits bound them.
        net.prune_grace = None;
        net.max_inbound_connections = fl
            .max_inbound_connections
            .unwrap_or(net.max_inbound_connections);
        net.max_inbound_per_ip = fl.max_inbound_per_ip.unwrap_or(RELAY_MAX_INBOUND_PER_IP);
        Ok(Self {
            data_dir,
            net,
            external,
            limits,
            metrics,
            log_format,
            advertise: !flags.no_advertise && file.advertise.unwrap_or(true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let file = FileConfig::parse(
            r#"
            data_dir = "/from/file"
            listen = ["/ip4/127.0.0.1/tcp/4001"]
            metrics = "127.0.0.1:9464"
            log_format = "json"
            [limits]
            retention_days = 3
            max_mailbox_envelopes = 50
            max_inbound_per_ip = 5
            [circuits]
            max_circuits = 2
            "#,
        )
        .unwrap();
        let flags = Overrides {
            data_dir: Some("/from/flag".into()),
            max_mailbox_envelopes: Some(70),
            ..Overrides::default()
        };
        let r = Resolved::new(flags, file).unwrap();
        assert_eq!(r.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(r.net.listen.len(), 1);
        assert_eq!(r.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(r.log_format, LogFormat::Json);
        assert_eq!(r.limits.retention_secs, 3 * 24 * 3600);
        assert_eq!(r.limits.max_count, 70);
        assert_eq!(r.limits.max_bytes, Limits::default().max_bytes);
        assert_eq!(r.net.relay_server.unwrap().max_circuits, 2);
        assert_eq!(r.net.max_inbound_per_ip, 5);
        assert!(r.net.serve_mailboxes);
        assert!(r.advertise);
    }

    /// The operator's guide shows the defaults: its example file must
    /// parse, and its limits must be the code's.
    #[test]
    fn the_guides_example_is_valid_and_shows_the_defaults() {
        let guide = include_str!("../../docs/relay-operators.md");
        let start = guide.find("```toml\n").unwrap() + "```toml\n".len();
        let len = guide[start..].find("```").unwrap();
        let file = FileConfig::parse(&guide[start..start + len]).unwrap();
        let r = Resolved::new(Overrides::default(), file).unwrap();
        let d = Limits::default();
        assert_eq!(r.limits.retention_secs, d.retention_secs);
        assert_eq!(r.limits.max_count, d.max_count);
        assert_eq!(r.limits.max_bytes, d.max_bytes);
        assert_eq!(r.limits.max_envelope, d.max_envelope);
        assert_eq!(r.limits.disk_budget, d.disk_budget);
        assert_eq!(r.limits.deposit_rate, d.deposit_rate);
        assert_eq!(r.limits.deposit_kib_rate, d.deposit_kib_rate);
        let c = RelayServerConfig::default();
        assert_eq!(r.net.relay_server, Some(c));
        let defaults = Resolved::new(
            Overrides {
                data_dir: Some("/d".into()),
                ..Overrides::default()
            },
            FileConfig::default(),
        )
        .unwrap();
        assert_eq!(
            (r.net.max_inbound_connections, r.net.max_inbound_per_ip),
            (
                defaults.net.max_inbound_connections,
                defaults.net.max_inbound_per_ip
            )
        );
        assert_eq!(r.net.max_inbound_per_ip, RELAY_MAX_INBOUND_PER_IP);
    }

    #[test]
    fn mistakes_are_named() {
        let e = FileConfig::parse("data_dir = \"/x\"\nretention = 3\n").unwrap_err();
        assert!(e.contains("retention"), "{e}");
        let e = FileConfig::parse("[limits]\nretention_days = \"three\"\n").unwrap_err();
        assert!(e.contains("retention_days"), "{e}");
        let bad = |flags: Overrides| {
            Resolved::new(
                Overrides {
                    data_dir: Some("/d".into()),
                    ..flags
                },
                FileConfig::default(),
            )
            .unwrap_err()
            .to_string()
        };
        assert!(
            bad(Overrides {
                listen: vec!["tcp:4001".into()],
                ..Overrides::default()
            })
            .starts_with("listen:")
        );
        assert!(
            bad(Overrides {
                metrics: Some("nine".into()),
                ..Overrides::default()
            })
            .starts_with("metrics:")
        );
        assert!(
            bad(Overrides {
                max_envelope_bytes: Some(usize::MAX),
                ..Overrides::default()
            })
            .starts_with("max_envelope_bytes:")
        );
        assert!(
            bad(Overrides {
                bootstrap: vec!["/ip4/1.2.3.4/tcp/1".into()],
                ..Overrides::default()
            })
            .starts_with("bootstrap:")
        );
        assert!(matches!(
            Resolved::new(Overrides::default(), FileConfig::default()),
            Err(ConfigError::NoDataDir)
        ));
    }
}
