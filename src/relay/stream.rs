//! `/meshchat/mailbox-stream/1`: one long-lived stream per depositor, over
//! which mailbox requests are pipelined.
//!
//! Request-response opens a substream (and negotiates its protocol) for
//! every request; a busy depositor pays that per batch. On this stream a
//! client writes requests back to back and the relay answers each as soon
//! as it can — a custody receipt straight from the sync thread once its
//! envelopes are on disk — so answers may come out of order. Each frame is
//!
//! ```text
//! len: u32 (big-endian, of what follows) ‖ id: u64 (big-endian) ‖ message
//! ```
//!
//! where the message is a [`Request`] (client → relay) or a [`Response`]
//! (relay → client) in its usual encoding, and `id` is the client's, echoed
//! in the answer. Lengths are bounded before anything is allocated: a
//! request by [`MAX_REQUEST`], an answer by [`MAX_RESPONSE`].
//!
//! The node's direct stream (`/meshchat/direct-stream/1`) uses the same
//! framing, client driver ([`run_client`]), serving loop ([`serve`]) and
//! acceptor ([`accept`]), with direct batches and acks as its messages; a
//! [`ClientCodec`] says what the messages of a stream are.
//!
//! The relay reads at most [`STREAM_WINDOW`] requests ahead of its answers
//! (it stops reading; the client's writes then wait), keeps at most
//! [`MAX_STREAMS_PER_PEER`] streams per peer, and closes a stream whose
//! framing breaks. A frame that is well framed but does not decode is
//! answered `Refused(Malformed)` and the stream goes on.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use libp2p::futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

#[cfg(any(test, doc))]
use super::proto::MAX_REQUEST;
use super::proto::{MAX_RESPONSE, Request, Response};

/// The protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/meshchat/mailbox-stream/1");
/// Most requests a relay reads on one stream before answering them.
pub const STREAM_WINDOW: usize = 64;
/// Most mailbox streams a relay keeps open per peer.
pub const MAX_STREAMS_PER_PEER: usize = 4;
/// Most bytes allocated for a frame's message before its bytes arrive.
const PREALLOCATE_MESSAGE: usize = 64 * 1024;
/// Most bytes of frames gathered into one write.
const WRITE_CHUNK: usize = 256 * 1024;

fn invalid(detail: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("mailbox stream: {detail}"),
    )
}

/// Appends one frame carrying `message` under `id` to `out`.
pub fn push_frame(out: &mut Vec<u8>, id: u64, message: &[u8]) -> io::Result<()> {
    let len = u32::try_from(8 + message.len()).map_err(|_| invalid("frame over 4 GiB"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(message);
    Ok(())
}

/// Reads one frame whose message is at most `max` bytes. `None` when the
/// stream ends cleanly between frames; an `InvalidData` error for a length
/// out of bounds (checked before anything is allocated), `UnexpectedEof`
/// for a stream cut inside a frame. The message's buffer grows with the
/// bytes that arrive, so a peer that announces a large frame and sends
/// nothing more holds at most 64 KiB more than it sent.
pub async fn read_frame<T: AsyncRead + Unpin>(
    io: &mut T,
    max: usize,
) -> io::Result<Option<(u64, Vec<u8>)>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match io.read(&mut len[got..]).await {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(invalid("cut inside a frame's length")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len < 8 || len - 8 > max {
        return Err(invalid(format_args!(
            "a frame of {len} bytes (8 to {} allowed)",
            max.saturating_add(8)
        )));
    }
    let mut id = [0u8; 8];
    io.read_exact(&mut id).await?;
    let want = len - 8;
    // Room for a usual message at once; a larger one grows as it comes.
    let mut message = Vec::with_capacity(want.min(PREALLOCATE_MESSAGE));
    (&mut *io)
        .take(want as u64)
        .read_to_end(&mut message)
        .await?;
    if message.len() != want {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "stream cut inside a frame",
        ));
    }
    Ok(Some((u64::from_be_bytes(id), message)))
}

fn lock<T>(open: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    open.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One answer of a client's stream: the request's id and the other
/// side's answer, or why there is none (the stream failed or closed
/// first).
pub type ClientAnswer<A = Response> = (u64, Result<A, String>);

/// What a stream's client writes and reads in its frames' messages: the
/// framing is the same for every stream protocol built on it (the mailbox
/// stream here, the node's direct stream).
pub trait ClientCodec: Send + Sync + 'static {
    /// What the client sends.
    type Request: Send + 'static;
    /// What comes back for each request.
    type Answer: Send + 'static;
    /// Largest answer message read (checked before allocating).
    fn max_answer(&self) -> usize;
    /// The message carrying `request`.
    fn encode(&self, request: &Self::Request) -> io::Result<Vec<u8>>;
    /// The answer a message carries.
    fn decode(&self, message: &[u8]) -> io::Result<Self::Answer>;
}

/// The mailbox stream's messages: [`Request`]s out, [`Response`]s back.
#[derive(Debug, Clone, Copy, Default)]
pub struct MailboxCodec;

impl ClientCodec for MailboxCodec {
    type Request = Request;
    type Answer = Response;

    fn max_answer(&self) -> usize {
        MAX_RESPONSE
    }

    fn encode(&self, request: &Request) -> io::Result<Vec<u8>> {
        Ok(request.to_bytes())
    }

    fn decode(&self, message: &[u8]) -> io::Result<Response> {
        Response::from_bytes(message).map_err(invalid)
    }
}

/// Drives the client's side of a stream: writes each request from
/// `requests` (gathering those already waiting into one write) and sends
/// every answer to `answers`. When the stream fails, the other side
/// closes it, or a request has waited longer than `deadline` for its
/// answer, every request still unanswered is answered with the error and
/// the stream is dropped; returns when `requests` is closed and every
/// answer is in, or on that failure.
pub async fn run_client<C: ClientCodec>(
    codec: C,
    stream: Stream,
    deadline: std::time::Duration,
    mut requests: mpsc::UnboundedReceiver<(u64, C::Request)>,
    answers: mpsc::UnboundedSender<ClientAnswer<C::Answer>>,
) {
    let (mut rd, mut wr) = stream.split();
    // Each open request and when it was taken to be written.
    let open: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let codec = &codec;
    let writer = {
        let open = open.clone();
        let requests = &mut requests;
        async move {
            let mut buf = Vec::new();
            // Each id is open before its request is encoded: a request
            // that fails to encode fails the stream, and every open id is
            // then answered with the error.
            while let Some((id, request)) = requests.recv().await {
                buf.clear();
                lock(&open).insert(id, Instant::now());
                push_frame(&mut buf, id, &codec.encode(&request)?)?;
                while buf.len() < WRITE_CHUNK
                    && let Ok((id, request)) = requests.try_recv()
                {
                    lock(&open).insert(id, Instant::now());
                    push_frame(&mut buf, id, &codec.encode(&request)?)?;
                }
                wr.write_all(&buf).await?;
                wr.flush().await?;
            }
            // No more requests: say so, and let the reader finish.
            wr.close().await?;
            io::Result::Ok(())
        }
    };
    let reader = {
        let open = open.clone();
        let answers = answers.clone();
        async move {
            loop {
                let Some((id, bytes)) = read_frame(&mut rd, codec.max_answer()).await? else {
                    return Ok(());
                };
                if !lock(&open).contains_key(&id) {
                    return Err(invalid(format_args!("an answer to request {id}, not open")));
                }
                // Still open if it does not decode: answered with the error.
                let response = codec.decode(&bytes)?;
                lock(&open).remove(&id);
                if answers.send((id, Ok(response))).is_err() {
                    return Ok(());
                }
            }
        }
    };
    let late = || {
        let now = Instant::now();
        lock(&open)
            .values()
            .any(|t| now.saturating_duration_since(*t) > deadline)
    };
    let mut check = tokio::time::interval((deadline / 4).max(std::time::Duration::from_millis(10)));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let failure = {
        tokio::pin!(writer, reader);
        let mut writing = true;
        // When our side closed: with nothing open after that, the other
        // side has `deadline` to close its own, or the task ends anyway
        // (a peer that never closes must not keep it, and its stream,
        // for good).
        let mut closed_at: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = check.tick() => {
                    if late() {
                        break Some(format!("no answer within {deadline:?}"));
                    }
                    if closed_at.is_some_and(|t| t.elapsed() > deadline) && lock(&open).is_empty() {
                        break None;
                    }
                },
                w = &mut writer, if writing => match w {
                    Ok(()) => {
                        writing = false;
                        closed_at = Some(Instant::now());
                    }
                    Err(e) => break Some(e.to_string()),
                },
                r = &mut reader => match r {
                    Ok(()) if !writing && lock(&open).is_empty() => break None,
                    Ok(()) => break Some("the other side closed the stream".to_owned()),
                    Err(e) => break Some(e.to_string()),
                },
            }
        }
    };
    let why = failure.unwrap_or_else(|| "the stream closed".to_owned());
    // Requests written and unanswered, then those never written: each
    // gets the error, so the caller forgets none of them.
    requests.close();
    let unwritten = std::iter::from_fn(|| requests.try_recv().ok().map(|(id, _)| id));
    for id in lock(&open)
        .drain()
        .map(|(id, _)| id)
        .collect::<Vec<_>>()
        .into_iter()
        .chain(unwritten)
    {
        let _ = answers.send((id, Err(why.clone())));
    }
}

/// Where the serving side's answer to one request goes: the writer of the
/// stream it came on. It holds the request's place in the stream's window,
/// given back once the answer is written. Dropped unanswered, it sends its
/// fallback answer if it has one (see [`Responder::or_else`]).
#[derive(Debug)]
pub struct Responder<A> {
    id: u64,
    to: Option<mpsc::UnboundedSender<Answered<A>>>,
    permit: Option<OwnedSemaphorePermit>,
    /// Boxed: most responders have none, and stay small.
    fallback: Option<Box<A>>,
}

/// An answer on its way to a stream's writer.
type Answered<A> = (u64, A, Option<OwnedSemaphorePermit>);

impl<A> Responder<A> {
    /// The request's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Answers with `fallback` if dropped unanswered, so that the client
    /// is never left waiting on a request lost on the way.
    pub fn or_else(mut self, fallback: A) -> Self {
        self.fallback = Some(Box::new(fallback));
        self
    }

    /// Sends `answer` (written once the answers before it are).
    pub fn send(mut self, answer: A) {
        if let Some(to) = self.to.take() {
            let _ = to.send((self.id, answer, self.permit.take()));
        }
    }
}

impl<A> Drop for Responder<A> {
    fn drop(&mut self) {
        if let (Some(to), Some(answer)) = (self.to.take(), self.fallback.take()) {
            let _ = to.send((self.id, *answer, self.permit.take()));
        }
    }
}

/// How a stream is served: see [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct Serving {
    /// Most requests read ahead of their answers.
    pub window: usize,
    /// Largest request message.
    pub max_request: usize,
    /// Longest wait for the next whole request: then nothing more is
    /// read, the answers still due are written, and the stream closes.
    pub idle: std::time::Duration,
}

/// Serves one stream: reads requests (bounded as `how` says: at most
/// `window` ahead of their answers, then it stops reading and the client's
/// writes wait), and hands each to `on_request` with the [`Responder`] its
/// answer goes through; writes the answers as they come, those waiting
/// gathered into one write, each encoded by `encode`. `on_request` returns
/// `false` to stop reading. Returns once the client has closed its side,
/// or been idle for `how.idle`, and every answer is written; or on the
/// first error (`InvalidData`: the client broke the framing, or
/// `on_request` said the request was not acceptable by returning that
/// error; `TimedOut`: the client took no answer for `how.idle`, so that a
/// client that stops reading cannot hold its answers and its place).
pub async fn serve<S, A, E, F>(
    stream: S,
    how: Serving,
    encode: E,
    mut on_request: F,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    E: Fn(&A) -> io::Result<Vec<u8>>,
    F: FnMut(u64, Vec<u8>, Responder<A>) -> io::Result<bool>,
{
    let (mut rd, mut wr) = stream.split();
    let (to_writer, mut answers) = mpsc::unbounded_channel::<Answered<A>>();
    let window = Arc::new(Semaphore::new(how.window));
    let writer = async move {
        let mut buf = Vec::new();
        while let Some((id, answer, permit)) = answers.recv().await {
            buf.clear();
            push_frame(&mut buf, id, &encode(&answer)?)?;
            let mut permits = vec![permit];
            while buf.len() < WRITE_CHUNK
                && let Ok((id, answer, permit)) = answers.try_recv()
            {
                push_frame(&mut buf, id, &encode(&answer)?)?;
                permits.push(permit);
            }
            let write = async {
                wr.write_all(&buf).await?;
                wr.flush().await
            };
            match tokio::time::timeout(how.idle, write).await {
                Ok(written) => written?,
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client took no answer for the idle time",
                    ));
                }
            }
            // The window opens only now.
            drop(permits);
        }
        wr.close().await
    };
    let reader = async move {
        loop {
            let Ok(permit) = window.clone().acquire_owned().await else {
                return Ok(());
            };
            let next = tokio::time::timeout(how.idle, read_frame(&mut rd, how.max_request));
            // Idle (or a frame stalled part way): read no more.
            let Ok(frame) = next.await else {
                return Ok(());
            };
            let Some((id, bytes)) = frame? else {
                return io::Result::Ok(());
            };
            let responder = Responder {
                id,
                to: Some(to_writer.clone()),
                permit: Some(permit),
                fallback: None,
            };
            if !on_request(id, bytes, responder)? {
                return Ok(());
            }
        }
    };
    tokio::pin!(writer);
    tokio::select! {
        // The client sent all it had: finish its answers.
        read = reader => {
            read?;
            writer.await
        }
        written = &mut writer => written,
    }
}

/// Takes the streams `incoming` brings, at most [`MAX_STREAMS_PER_PEER`]
/// at a time per peer, and runs `serve_one` on a task of its own for each
/// (holding the peer's place until it returns); a stream over the count
/// is dropped and `refused` told. Runs until `incoming` ends.
pub async fn accept<S, Fut>(
    mut incoming: libp2p_stream::IncomingStreams,
    mut serve_one: S,
    mut refused: impl FnMut(PeerId),
) where
    S: FnMut(PeerId, Stream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use libp2p::futures::StreamExt;
    let streams = Arc::new(OpenStreams::default());
    while let Some((peer, s)) = incoming.next().await {
        match streams.take(peer) {
            Some(slot) => {
                let serving = serve_one(peer, s);
                tokio::spawn(async move {
                    let _slot = slot;
                    serving.await;
                });
            }
            None => refused(peer),
        }
    }
}

/// Counts a peer's open streams; see [`MAX_STREAMS_PER_PEER`].
#[derive(Debug, Default)]
struct OpenStreams {
    per_peer: Mutex<HashMap<PeerId, usize>>,
}

/// A place among a peer's open streams, given back when dropped.
struct StreamSlot {
    streams: Arc<OpenStreams>,
    peer: PeerId,
}

impl OpenStreams {
    /// Takes a place for one more stream of `peer`, if it has one left.
    fn take(self: &Arc<Self>, peer: PeerId) -> Option<StreamSlot> {
        let mut map = lock(&self.per_peer);
        let n = map.entry(peer).or_default();
        if *n >= MAX_STREAMS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            streams: self.clone(),
            peer,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut map = lock(&self.streams.per_peer);
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::futures::executor::block_on;
    use libp2p::futures::io::Cursor;

    fn responder(id: u64) -> (Responder<u8>, mpsc::UnboundedReceiver<Answered<u8>>) {
        let (to, rx) = mpsc::unbounded_channel();
        let r = Responder {
            id,
            to: Some(to),
            permit: None,
            fallback: None,
        };
        (r, rx)
    }

    #[test]
    fn a_responder_answers_once_and_a_dropped_one_sends_its_fallback() {
        let (r, mut rx) = responder(7);
        r.or_else(2).send(1);
        assert_eq!(rx.try_recv().map(|(id, a, _)| (id, a)), Ok((7, 1)));
        // Answered: nothing more when dropped.
        assert!(rx.try_recv().is_err());

        let (r, mut rx) = responder(8);
        drop(r.or_else(2));
        assert_eq!(rx.try_recv().map(|(id, a, _)| (id, a)), Ok((8, 2)));
        assert!(rx.try_recv().is_err());

        // No fallback: nothing.
        let (r, mut rx) = responder(9);
        drop(r);
        assert!(rx.try_recv().is_err());
    }

    /// One end of an in-memory pipe of `tokio::io::duplex`, as the
    /// `futures` IO traits a libp2p stream has.
    struct Pipe(tokio::io::DuplexStream);

    impl AsyncRead for Pipe {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let mut rb = tokio::io::ReadBuf::new(buf);
            match tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut self.0), cx, &mut rb) {
                std::task::Poll::Ready(Ok(())) => std::task::Poll::Ready(Ok(rb.filled().len())),
                std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        }
    }

    impl AsyncWrite for Pipe {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            tokio::io::AsyncWrite::poll_write(std::pin::Pin::new(&mut self.0), cx, buf)
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            tokio::io::AsyncWrite::poll_flush(std::pin::Pin::new(&mut self.0), cx)
        }
        fn poll_close(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            tokio::io::AsyncWrite::poll_shutdown(std::pin::Pin::new(&mut self.0), cx)
        }
    }

    /// A client that sends requests and never reads its answers: once the
    /// pipe is full the writer waits, and after the idle time the stream
    /// ends with `TimedOut` instead of holding its answers for as long as
    /// the connection lives. A client that reads gets every answer.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_takes_no_answers_is_cut_after_the_idle_time() {
        let how = Serving {
            window: 8,
            max_request: 64,
            idle: std::time::Duration::from_secs(30),
        };
        let requests = |n: u64| {
            let mut out = Vec::new();
            for id in 0..n {
                push_frame(&mut out, id, b"q").unwrap();
            }
            out
        };
        // Each answer is 4 KiB; the pipe holds 1 KiB.
        let answer = |_: &u8| Ok(vec![7u8; 4096]);
        let (mut client, server) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, &requests(4))
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let served = serve(Pipe(server), how, answer, |_, _, r: Responder<u8>| {
            r.send(1);
            Ok(true)
        })
        .await;
        let e = served.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        // Cut at the idle time (the reader, idle too, stopped before).
        let waited = started.elapsed();
        assert!(waited >= how.idle && waited < how.idle * 2, "{waited:?}");
        drop(client);

        // The same, read as they come: every answer, then the end.
        let (client, server) = tokio::io::duplex(1024);
        let mut client = Pipe(client);
        let serving = tokio::spawn(serve(
            Pipe(server),
            how,
            answer,
            |_, _, r: Responder<u8>| {
                r.send(1);
                Ok(true)
            },
        ));
        client.write_all(&requests(4)).await.unwrap();
        client.close().await.unwrap();
        for id in 0..4 {
            let (got, message) = read_frame(&mut client, 8192).await.unwrap().unwrap();
            assert_eq!((got, message.len()), (id, 4096));
        }
        assert_eq!(read_frame(&mut client, 8192).await.unwrap(), None);
        serving.await.unwrap().unwrap();
    }

    #[test]
    fn frames_round_trip_and_bad_lengths_are_refused_before_allocating() {
        block_on(async {
            let mut buf = Vec::new();
            push_frame(&mut buf, 7, b"hello").unwrap();
            push_frame(&mut buf, u64::MAX, b"").unwrap();
            let mut io = Cursor::new(buf.clone());
            assert_eq!(
                read_frame(&mut io, 16).await.unwrap(),
                Some((7, b"hello".to_vec()))
            );
            assert_eq!(
                read_frame(&mut io, 16).await.unwrap(),
                Some((u64::MAX, Vec::new()))
            );
            assert_eq!(read_frame(&mut io, 16).await.unwrap(), None);

            // Over the bound: refused from the length alone.
            let mut io = Cursor::new(buf.clone());
            let e = read_frame(&mut io, 4).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            // A length of 4 GiB.
            let mut io = Cursor::new(vec![0xff, 0xff, 0xff, 0xff, 0, 0]);
            assert!(read_frame(&mut io, MAX_REQUEST).await.is_err());
            // Shorter than its id.
            let mut io = Cursor::new(vec![0, 0, 0, 3, 1, 2, 3]);
            assert!(read_frame(&mut io, 16).await.is_err());
            // Cut inside the length, and inside the message.
            let mut io = Cursor::new(vec![0, 0]);
            assert!(read_frame(&mut io, 16).await.is_err());
            let mut io = Cursor::new(buf[..10].to_vec());
            assert!(read_frame(&mut io, 16).await.is_err());
            // A large frame announced, a few bytes sent: the stream's end
            // is an error, and the buffer held only what came.
            let mut io = Cursor::new([&[0, 16, 0, 8][..], &[0; 8], &[1, 2, 3]].concat());
            let e = read_frame(&mut io, 1 << 21).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        });
    }
}
