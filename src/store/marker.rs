//! The `STORE` marker file beside sled's files.
//!
//! sled treats a damaged or missing data file as an empty database, and a
//! damaged log tail as a write that never completed. Without a record
//! outside sled, a store whose data file was destroyed or cut short would
//! open with data silently missing. The marker holds:
//!
//! ```text
//! meshchat store v1
//! <store id: SHA-256 of the sealed key-check record, 64 hex digits>
//! <flush generation, 20 decimal digits>
//! ```
//!
//! Every [`super::Store::flush`] raises the generation in the `meta` tree,
//! flushes sled, then overwrites the generation here in place (one fixed-size
//! write and `fdatasync`). On open, sled's generation must be at least the
//! marker's: if it is lower, writes that were reported durable are gone.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::Error;
use super::codec::hex;

const FILE: &str = "STORE";
const HEADER: &str = "meshchat store v1";
const GEN_OFFSET: u64 = (HEADER.len() + 1 + 64 + 1) as u64;

/// What the marker says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Marker {
    pub(crate) id: String,
    pub(crate) generation: u64,
}

/// The store id written in the marker: SHA-256 of the sealed key check.
pub(crate) fn store_id(sealed_check: &[u8]) -> String {
    hex(&Sha256::digest(sealed_check))
}

fn damaged(dir: &Path, what: String) -> Error {
    Error::Damaged {
        path: dir.to_path_buf(),
        what,
    }
}

/// The directory's marker, if there is one.
pub(crate) fn read(dir: &Path) -> Result<Option<Marker>, Error> {
    let path = dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(damaged(dir, format!("cannot read {}: {e}", path.display()))),
    };
    let mut lines = text.lines();
    match (lines.next(), lines.next(), lines.next(), lines.next()) {
        (Some(HEADER), Some(id), Some(generation), None) if id.len() == 64 => {
            let generation = generation
                .parse()
                .map_err(|_| damaged(dir, format!("{} has a bad generation", path.display())))?;
            Ok(Some(Marker {
                id: id.to_owned(),
                generation,
            }))
        }
        _ => Err(damaged(
            dir,
            format!("{} is not a meshchat store marker", path.display()),
        )),
    }
}

/// Writes a new marker atomically (temporary file, fsync, rename).
pub(crate) fn create(dir: &Path, marker: &Marker) -> Result<(), Error> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let fail = |e: std::io::Error| damaged(dir, format!("cannot write the store marker: {e}"));
    let mut f = File::create(&tmp).map_err(fail)?;
    write!(f, "{HEADER}\n{}\n{:020}\n", marker.id, marker.generation).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, dir.join(FILE)).map_err(fail)?;
    let _ = super::sync_dir(dir);
    Ok(())
}

/// The open marker, for recording flush generations.
/// How often, at most, a flush also forces the marker itself to disk.
const MARKER_SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Watermark {
    file: File,
    /// When the marker was last forced to disk, if ever.
    synced: Option<std::time::Instant>,
}

impl Watermark {
    pub(crate) fn open(dir: &Path) -> Result<Self, Error> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(FILE))
            .map_err(|e| damaged(dir, format!("cannot open the store marker: {e}")))?;
        Ok(Self { file, synced: None })
    }

    /// Records that everything up to `generation` is on disk.
    ///
    /// The generation is written in place on every call (20 bytes inside
    /// the file's first sector, so it cannot tear), which a process crash
    /// cannot undo. Forcing it to the device costs a second `fdatasync` per
    /// flush, so that happens at most every [`MARKER_SYNC_EVERY`] and on
    /// [`Self::sync`]: after a power cut the marker may name an older
    /// generation than the data reached, which only narrows what the check
    /// on open can prove (it never reports damage that is not there, as the
    /// marker is written after the data it vouches for).
    pub(crate) fn set(&mut self, generation: u64) -> std::io::Result<()> {
        self.file
            .write_all_at(format!("{generation:020}").as_bytes(), GEN_OFFSET)?;
        if self.synced.is_none_or(|t| t.elapsed() >= MARKER_SYNC_EVERY) {
            self.sync()?;
        }
        Ok(())
    }

    /// Forces the marker to disk.
    pub(crate) fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        self.synced = Some(std::time::Instant::now());
        Ok(())
    }
}
