//! The request-response codec of `/meshchat/mailbox/1`.
//!
//! ```text
//! message = len (u32 BE) ‖ len bytes (a `Request` or `Response`, see `proto`)
//! ```
//!
//! The length is checked against the message kind's bound before anything
//! is allocated for it, the bytes are decoded by the bounded decoder, and
//! the stream must end right after them.
//!
//! A request that breaks any of this is not a stream reset: it reaches the
//! node as [`Inbound::Malformed`], which is answered `Refused(Malformed)` —
//! the sender learns why. An over-long request is refused from its length
//! alone, without reading (or buffering) the rest.

use std::io;

use libp2p::StreamProtocol;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::proto::{MAILBOX_PROTOCOL, MAX_REQUEST, MAX_RESPONSE, Request, Response};

/// The protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new(MAILBOX_PROTOCOL);

fn invalid(what: &str, detail: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {detail}"))
}

/// Reads one length-prefixed message of at most `max` bytes, then checks
/// that the stream ends.
pub async fn read_message<T: AsyncRead + Unpin>(
    io: &mut T,
    max: usize,
    what: &str,
) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(invalid(what, format_args!("{len} bytes, at most {max}")));
    }
    // Grown as the bytes come, not reserved whole from the prefix: a
    // peer that announces megabytes on many streams and sends nothing
    // holds no memory for them.
    let mut buf = Vec::with_capacity(len.min(64 * 1024));
    (&mut *io).take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "{what}: {} of {len} bytes before the stream ended",
                buf.len()
            ),
        ));
    }
    let mut probe = [0u8; 1];
    loop {
        match io.read(&mut probe).await {
            Ok(0) => return Ok(buf),
            Ok(_) => return Err(invalid(what, "bytes after the message")),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes one length-prefixed message, in one write (one muxer frame,
/// not one for the prefix and one for the rest).
pub async fn write_message<T: AsyncWrite + Unpin>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| invalid("message", "over 4 GiB"))?;
    let mut framed = Vec::with_capacity(4 + bytes.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    io.write_all(&framed).await
}

/// A request as it arrives (or leaves: always [`Inbound::Request`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A well-formed request.
    Request(Request),
    /// Bytes that are not one: over the size bound, undecodable, or
    /// followed by more. Why, for the log.
    Malformed(String),
}

/// The codec: requests up to `max_request` bytes (a node that is not a
/// relay takes only small ones, to refuse them cheaply).
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    /// Largest request read.
    pub max_request: usize,
}

impl Default for Codec {
    fn default() -> Self {
        Self {
            max_request: MAX_REQUEST,
        }
    }
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Inbound;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Inbound>
    where
        T: AsyncRead + Unpin + Send,
    {
        match read_message(io, self.max_request, "mailbox request").await {
            Ok(bytes) => Ok(match Request::from_bytes(&bytes) {
                Ok(r) => Inbound::Request(r),
                Err(e) => Inbound::Malformed(e.to_string()),
            }),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                Ok(Inbound::Malformed(e.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_message(io, MAX_RESPONSE, "mailbox response").await?;
        Response::from_bytes(&bytes).map_err(|e| invalid("mailbox response", e))
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Inbound,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            Inbound::Request(r) => write_message(io, &r.to_bytes()).await,
            Inbound::Malformed(_) => Err(invalid("mailbox request", "not a request")),
        }
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, &res.to_bytes()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::proto::Refusal;
    use libp2p::futures::executor::block_on;
    use libp2p::futures::io::Cursor;
    use libp2p::request_response::Codec as _;

    #[test]
    fn messages_round_trip_and_bad_framing_is_refused() {
        block_on(async {
            let mut codec = Codec::default();
            let mut out = Cursor::new(Vec::new());
            let res = Response::Refused(Refusal::QuotaFull);
            codec
                .write_response(&PROTOCOL, &mut out, res.clone())
                .await
                .unwrap();
            let bytes = out.into_inner();
            let back = codec
                .read_response(&PROTOCOL, &mut Cursor::new(bytes.clone()))
                .await
                .unwrap();
            assert_eq!(back, res);

            // Trailing bytes, a cut-off message, a length over the bound.
            let mut trailing = bytes.clone();
            trailing.push(0);
            assert!(
                codec
                    .read_response(&PROTOCOL, &mut Cursor::new(trailing))
                    .await
                    .is_err()
            );
            let cut = bytes[..bytes.len() - 1].to_vec();
            assert!(
                codec
                    .read_response(&PROTOCOL, &mut Cursor::new(cut))
                    .await
                    .is_err()
            );
            // A request over the bound is refused from its length alone.
            let huge = u32::MAX.to_be_bytes().to_vec();
            assert!(matches!(
                codec.read_request(&PROTOCOL, &mut Cursor::new(huge)).await,
                Ok(Inbound::Malformed(_))
            ));
            // Well framed, not a request.
            let mut junk = Vec::new();
            write_message(&mut Cursor::new(&mut junk), &[9, 9, 9])
                .await
                .unwrap();
            assert!(matches!(
                codec.read_request(&PROTOCOL, &mut Cursor::new(junk)).await,
                Ok(Inbound::Malformed(_))
            ));
            // A stream cut short is an I/O error (nobody to answer).
            assert!(
                codec
                    .read_request(&PROTOCOL, &mut Cursor::new(vec![0, 0]))
                    .await
                    .is_err()
            );
        });
    }
}
