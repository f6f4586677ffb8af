//! `/meshchat/direct/1`: the fast path between two connected devices.
//!
//! A request is a batch of opaque frames (the node decides what they are:
//! ratchet and prekey messages, bundle requests and bundles); the response is a transport ack with one status per frame.
//! Both are our own length-prefixed, versioned layouts, written once and
//! closed (request-response closes the write side after each message):
//!
//! ```text
//! request = version (u8 = 1) ‖ count (u16 BE, 1..=max_frames)
//!           ‖ count × ( len (u32 BE, ≤ max_frame_len) ‖ len bytes )
//! ack     = version (u8 = 1) ‖ count (u16 BE, ≤ max_frames)
//!           ‖ count × status (u8: 0 accepted, 1 duplicate, 2 rejected)
//! ```
//!
//! Every count and length is checked against [`Limits`] before anything is
//! allocated for it, the running total of a batch before each frame is read,
//! and the stream must end right after the last frame.

use std::io;

use libp2p::StreamProtocol;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::DirectError;
use crate::crypto::limits::MAX_ENVELOPE;

/// The protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/meshchat/direct/1");
/// The long-lived stream carrying the same batches and acks, pipelined
/// (see [`StreamCodec`]).
pub const STREAM_PROTOCOL: StreamProtocol = StreamProtocol::new("/meshchat/direct-stream/1");
/// The version byte that starts every request and ack.
pub const VERSION: u8 = 1;
/// Default largest frame: a sealed envelope plus headroom for wrapping.
pub const DEFAULT_MAX_FRAME: usize = 96 * 1024;
/// Default most frames per batch.
pub const DEFAULT_MAX_FRAMES: usize = 256;
/// Default largest batch (sum of frame lengths).
pub const DEFAULT_MAX_BATCH: usize = 4 * 1024 * 1024;

// The direct path must be able to carry any envelope the mesh can.
const _: () = assert!(MAX_ENVELOPE <= DEFAULT_MAX_FRAME);

const REQUEST: &str = "direct request";
const ACK: &str = "direct ack";

/// Bounds on what one batch may carry. Counts travel as `u16` and lengths as
/// `u32`, so larger limits are clamped to those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most frames in one batch (and statuses in one ack).
    pub max_frames: usize,
    /// Largest single frame.
    pub max_frame_len: usize,
    /// Largest sum of frame lengths in one batch.
    pub max_batch_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frames: DEFAULT_MAX_FRAMES,
            max_frame_len: DEFAULT_MAX_FRAME,
            max_batch_bytes: DEFAULT_MAX_BATCH,
        }
    }
}

impl Limits {
    fn max_frames(&self) -> usize {
        self.max_frames.min(usize::from(u16::MAX))
    }

    fn max_frame_len(&self) -> usize {
        self.max_frame_len.min(u32::MAX as usize)
    }

    /// Largest encoded batch these limits let through.
    pub fn max_batch_message(&self) -> usize {
        3usize
            .saturating_add(self.max_frames().saturating_mul(4))
            .saturating_add(self.max_batch_bytes)
    }

    /// Largest encoded ack.
    pub fn max_ack_message(&self) -> usize {
        3 + self.max_frames()
    }
}

/// A request: frames for the peer, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    /// The frames (opaque to this layer).
    pub frames: Vec<Vec<u8>>,
}

impl Batch {
    /// A batch of `frames`.
    pub fn new(frames: Vec<Vec<u8>>) -> Self {
        Self { frames }
    }

    /// Checks the batch against `limits` (what the peer will enforce).
    pub fn check(&self, limits: &Limits) -> Result<(), DirectError> {
        check_count(self.frames.len(), limits)?;
        let mut total = 0usize;
        for (index, frame) in self.frames.iter().enumerate() {
            total = check_frame(index, frame.len(), total, limits)?;
        }
        Ok(())
    }

    /// The encoded request, after [`Batch::check`].
    pub fn encode(&self, limits: &Limits) -> Result<Vec<u8>, DirectError> {
        self.check(limits)?;
        let body: usize = self.frames.iter().map(|f| 4 + f.len()).sum();
        let mut out = Vec::with_capacity(3 + body);
        out.push(VERSION);
        // check() bounded the count by u16::MAX and each length by u32::MAX.
        out.extend_from_slice(&(self.frames.len() as u16).to_be_bytes());
        for frame in &self.frames {
            out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
            out.extend_from_slice(frame);
        }
        Ok(out)
    }

    /// Decodes a complete request held in memory.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self, DirectError> {
        // A slice reader never returns Pending, so this completes at once.
        libp2p::futures::executor::block_on(read_batch(&mut &bytes[..], limits))
    }
}

/// What became of one frame of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameStatus {
    /// Taken into custody (stored or handed on).
    Accepted,
    /// Already had it; the sender may count it as delivered.
    Duplicate,
    /// Refused (malformed, undecryptable, over quota); do not resend as is.
    Rejected,
}

impl FrameStatus {
    /// `Accepted` for a frame taken, `Rejected` otherwise (the node never
    /// sends `Duplicate`: a copy of a frame it read is answered `Accepted`
    /// once, then refused; see `Engine::receive`).
    pub fn from_accepted(accepted: bool) -> Self {
        if accepted {
            Self::Accepted
        } else {
            Self::Rejected
        }
    }

    fn to_byte(self) -> u8 {
        match self {
            Self::Accepted => 0,
            Self::Duplicate => 1,
            Self::Rejected => 2,
        }
    }

    fn from_byte(b: u8) -> Result<Self, DirectError> {
        match b {
            0 => Ok(Self::Accepted),
            1 => Ok(Self::Duplicate),
            2 => Ok(Self::Rejected),
            other => Err(DirectError::UnknownStatus(other)),
        }
    }
}

/// The response: one status per frame of the request, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ack {
    /// Per-frame statuses.
    pub statuses: Vec<FrameStatus>,
}

impl Ack {
    /// An ack giving every one of `count` frames the same status.
    pub fn all(status: FrameStatus, count: usize) -> Self {
        Self {
            statuses: vec![status; count],
        }
    }

    /// How many frames the peer took (accepted or already had).
    pub fn delivered(&self) -> usize {
        self.statuses
            .iter()
            .filter(|s| matches!(s, FrameStatus::Accepted | FrameStatus::Duplicate))
            .count()
    }

    /// The encoded ack.
    pub fn encode(&self, limits: &Limits) -> Result<Vec<u8>, DirectError> {
        if self.statuses.len() > limits.max_frames() {
            return Err(DirectError::TooManyFrames {
                what: ACK,
                count: self.statuses.len(),
                max: limits.max_frames(),
            });
        }
        let mut out = Vec::with_capacity(3 + self.statuses.len());
        out.push(VERSION);
        out.extend_from_slice(&(self.statuses.len() as u16).to_be_bytes());
        out.extend(self.statuses.iter().map(|s| s.to_byte()));
        Ok(out)
    }

    /// Decodes a complete ack held in memory.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self, DirectError> {
        // A slice reader never returns Pending, so this completes at once.
        libp2p::futures::executor::block_on(read_ack(&mut &bytes[..], limits))
    }
}

fn check_count(count: usize, limits: &Limits) -> Result<(), DirectError> {
    if count == 0 {
        return Err(DirectError::Empty);
    }
    if count > limits.max_frames() {
        return Err(DirectError::TooManyFrames {
            what: REQUEST,
            count,
            max: limits.max_frames(),
        });
    }
    Ok(())
}

/// Checks one frame length against the limits; returns the new total.
fn check_frame(
    index: usize,
    len: usize,
    total: usize,
    limits: &Limits,
) -> Result<usize, DirectError> {
    if len > limits.max_frame_len() {
        return Err(DirectError::FrameTooLarge {
            index,
            len,
            max: limits.max_frame_len(),
        });
    }
    let total = total.saturating_add(len);
    if total > limits.max_batch_bytes {
        return Err(DirectError::BatchTooLarge {
            total,
            max: limits.max_batch_bytes,
        });
    }
    Ok(total)
}

async fn fill<T: AsyncRead + Unpin>(
    io: &mut T,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), DirectError> {
    io.read_exact(buf).await.map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => DirectError::Truncated { what },
        kind => DirectError::Io { what, kind },
    })
}

async fn expect_end<T: AsyncRead + Unpin>(
    io: &mut T,
    what: &'static str,
) -> Result<(), DirectError> {
    let mut probe = [0u8; 1];
    loop {
        return match io.read(&mut probe).await {
            Ok(0) => Ok(()),
            Ok(_) => Err(DirectError::TrailingBytes { what }),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(DirectError::Io {
                what,
                kind: e.kind(),
            }),
        };
    }
}

async fn read_header<T: AsyncRead + Unpin>(
    io: &mut T,
    what: &'static str,
) -> Result<usize, DirectError> {
    let mut head = [0u8; 3];
    fill(io, &mut head[..1], what).await?;
    if head[0] != VERSION {
        return Err(DirectError::UnknownVersion {
            what,
            got: head[0],
            expected: VERSION,
        });
    }
    fill(io, &mut head[1..], what).await?;
    Ok(usize::from(u16::from_be_bytes([head[1], head[2]])))
}

/// What a frame's buffer starts with before its bytes arrive.
pub(crate) const PREALLOCATE_FRAME: usize = 4 * 1024;

/// Reads one request from `io`, enforcing `limits` before each allocation.
pub async fn read_batch<T: AsyncRead + Unpin>(
    io: &mut T,
    limits: &Limits,
) -> Result<Batch, DirectError> {
    let count = read_header(io, REQUEST).await?;
    check_count(count, limits)?;
    let mut frames = Vec::with_capacity(count);
    let mut total = 0usize;
    for index in 0..count {
        let mut len = [0u8; 4];
        fill(io, &mut len, REQUEST).await?;
        let len = u32::from_be_bytes(len) as usize;
        total = check_frame(index, len, total, limits)?;
        // Grown as the bytes come, not allocated from the prefix alone: a
        // peer that names a long frame and stalls holds little memory.
        let mut frame = Vec::with_capacity(len.min(PREALLOCATE_FRAME));
        (&mut *io)
            .take(len as u64)
            .read_to_end(&mut frame)
            .await
            .map_err(|e| DirectError::Io {
                what: REQUEST,
                kind: e.kind(),
            })?;
        if frame.len() != len {
            return Err(DirectError::Truncated { what: REQUEST });
        }
        frames.push(frame);
    }
    expect_end(io, REQUEST).await?;
    Ok(Batch { frames })
}

/// Reads one ack from `io`.
pub async fn read_ack<T: AsyncRead + Unpin>(
    io: &mut T,
    limits: &Limits,
) -> Result<Ack, DirectError> {
    let count = read_header(io, ACK).await?;
    if count > limits.max_frames() {
        return Err(DirectError::TooManyFrames {
            what: ACK,
            count,
            max: limits.max_frames(),
        });
    }
    let mut raw = vec![0u8; count];
    fill(io, &mut raw, ACK).await?;
    let statuses = raw
        .into_iter()
        .map(FrameStatus::from_byte)
        .collect::<Result<Vec<_>, _>>()?;
    expect_end(io, ACK).await?;
    Ok(Ack { statuses })
}

/// The request-response codec for [`PROTOCOL`].
#[derive(Debug, Clone, Default)]
pub struct Codec {
    limits: Limits,
}

impl Codec {
    /// A codec enforcing `limits` in both directions.
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Batch;
    type Response = Ack;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Batch>
    where
        T: AsyncRead + Unpin + Send,
    {
        Ok(read_batch(io, &self.limits).await?)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Ack>
    where
        T: AsyncRead + Unpin + Send,
    {
        Ok(read_ack(io, &self.limits).await?)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Batch,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let bytes = req.encode(&self.limits)?;
        io.write_all(&bytes).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Ack,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let bytes = res.encode(&self.limits)?;
        io.write_all(&bytes).await
    }
}

/// [`STREAM_PROTOCOL`]: the framing of `crate::relay::stream` (length ‖ id
/// ‖ message, answers echoing the id), each request message a [`Batch`]
/// and each answer an [`Ack`] in the layouts above. A device opens one
/// such stream to a peer and sends its batches on it back to back; the
/// peer's answers come in the order it finishes them.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamCodec {
    /// Enforced on what is written and read.
    pub limits: Limits,
}

impl crate::relay::stream::ClientCodec for StreamCodec {
    type Request = Batch;
    type Answer = Ack;

    fn max_answer(&self) -> usize {
        self.limits.max_ack_message()
    }

    fn encode(&self, batch: &Batch) -> io::Result<Vec<u8>> {
        Ok(batch.encode(&self.limits)?)
    }

    fn decode(&self, message: &[u8]) -> io::Result<Ack> {
        Ok(Ack::decode(message, &self.limits)?)
    }
}
