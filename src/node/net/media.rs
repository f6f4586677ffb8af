//! `/meshchat/media/1`: encrypted media chunks, asked for by name.
//!
//! One request names one chunk; the answer carries it, or says it is not
//! here. The chunk is encrypted end to end (see [`crate::crypto::media`]);
//! its name is the SHA-256 of its bytes, which the asker checks.
//!
//! ```text
//! request = version (u8 = 1) ‖ name (32 bytes)
//! answer  = version (u8 = 1) ‖ 0                                (not here)
//!         | version (u8 = 1) ‖ 1 ‖ len (u32 BE, ≤ MAX_SEALED_CHUNK) ‖ bytes
//!         | version (u8 = 1) ‖ 2                                (busy: ask again soon)
//! ```
//!
//! The length is checked before anything is allocated, and the stream must
//! end right after the message.

use std::io;

use libp2p::StreamProtocol;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::crypto::media::MAX_SEALED_CHUNK;

/// The protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/meshchat/media/1");
const VERSION: u8 = 1;

/// Asks for the chunk of this name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRequest(pub [u8; 32]);

/// The answer to a [`ChunkRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkAnswer {
    /// The chunk.
    Here(Vec<u8>),
    /// The peer does not have it.
    NotHere,
    /// The peer is busy: ask again in a moment.
    Busy,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("media: {what}"))
}

async fn read_version<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<()> {
    let mut v = [0u8; 1];
    io.read_exact(&mut v).await?;
    if v[0] != VERSION {
        return Err(invalid(&format!(
            "unknown version {}, expected {VERSION}",
            v[0]
        )));
    }
    Ok(())
}

async fn expect_end<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<()> {
    let mut probe = [0u8; 1];
    match io.read(&mut probe).await? {
        0 => Ok(()),
        _ => Err(invalid("trailing bytes")),
    }
}

/// Reads a request.
pub async fn read_request<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<ChunkRequest> {
    read_version(io).await?;
    let mut name = [0u8; 32];
    io.read_exact(&mut name).await?;
    expect_end(io).await?;
    Ok(ChunkRequest(name))
}

/// Reads an answer, its length bounded before the chunk is read.
pub async fn read_answer<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<ChunkAnswer> {
    read_version(io).await?;
    let mut here = [0u8; 1];
    io.read_exact(&mut here).await?;
    let answer = match here[0] {
        0 => ChunkAnswer::NotHere,
        2 => ChunkAnswer::Busy,
        1 => {
            let mut len = [0u8; 4];
            io.read_exact(&mut len).await?;
            let len = u32::from_be_bytes(len) as usize;
            if len > MAX_SEALED_CHUNK {
                return Err(invalid(&format!(
                    "chunk of {len} bytes, max {MAX_SEALED_CHUNK}"
                )));
            }
            let mut chunk = Vec::with_capacity(len.min(16 * 1024));
            (&mut *io).take(len as u64).read_to_end(&mut chunk).await?;
            if chunk.len() != len {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            ChunkAnswer::Here(chunk)
        }
        other => return Err(invalid(&format!("unknown answer kind {other}"))),
    };
    expect_end(io).await?;
    Ok(answer)
}

impl ChunkRequest {
    /// Encoded form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(33);
        out.push(VERSION);
        out.extend_from_slice(&self.0);
        out
    }
}

impl ChunkAnswer {
    /// Encoded form; a chunk over the bound is an error.
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        match self {
            Self::NotHere => Ok(vec![VERSION, 0]),
            Self::Busy => Ok(vec![VERSION, 2]),
            Self::Here(c) if c.len() > MAX_SEALED_CHUNK => Err(invalid("chunk too large to send")),
            Self::Here(c) => {
                let mut out = Vec::with_capacity(6 + c.len());
                out.extend_from_slice(&[VERSION, 1]);
                out.extend_from_slice(&(c.len() as u32).to_be_bytes());
                out.extend_from_slice(c);
                Ok(out)
            }
        }
    }
}

/// The request-response codec for [`PROTOCOL`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Codec;

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = ChunkRequest;
    type Response = ChunkAnswer;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<ChunkRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_request(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<ChunkAnswer>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_answer(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: ChunkRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req.encode()).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: ChunkAnswer,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&res.encode()?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::futures::executor::block_on;

    #[test]
    fn requests_and_answers_round_trip() {
        let r = ChunkRequest([9; 32]);
        assert_eq!(block_on(read_request(&mut &r.encode()[..])).unwrap(), r);
        for a in [
            ChunkAnswer::NotHere,
            ChunkAnswer::Busy,
            ChunkAnswer::Here(vec![1, 2, 3]),
        ] {
            let bytes = a.encode().unwrap();
            assert_eq!(block_on(read_answer(&mut &bytes[..])).unwrap(), a);
        }
    }

    #[test]
    fn bad_answers_are_refused_before_allocating() {
        // A length past the bound.
        let mut big = vec![VERSION, 1];
        big.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(block_on(read_answer(&mut &big[..])).is_err());
        // Short, unknown version, unknown kind, trailing bytes.
        let mut short = vec![VERSION, 1];
        short.extend_from_slice(&10u32.to_be_bytes());
        short.extend_from_slice(&[0; 5]);
        assert!(block_on(read_answer(&mut &short[..])).is_err());
        assert!(block_on(read_answer(&mut &[2u8, 0][..])).is_err());
        assert!(block_on(read_answer(&mut &[VERSION, 7][..])).is_err());
        assert!(block_on(read_answer(&mut &[VERSION, 0, 0][..])).is_err());
        let mut req = ChunkRequest([1; 32]).encode();
        req.push(0);
        assert!(block_on(read_request(&mut &req[..])).is_err());
        assert!(block_on(read_request(&mut &[VERSION, 1, 2][..])).is_err());
        let too_big = ChunkAnswer::Here(vec![0; MAX_SEALED_CHUNK + 1]);
        assert!(too_big.encode().is_err());
    }
}
