//! A blocking client of the local API (what the CLI commands use).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::proto::{Answer, ApiError, Request};

/// Longest answer line read, in bytes: a page of 500 messages of 64 KiB,
/// JSON-escaped, with room to spare.
pub const MAX_ANSWER: usize = 256 * 1024 * 1024;

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("no meshchat daemon is running for {0} (start one with `meshchat run`)")]
    NoDaemon(PathBuf),
    /// The connection failed.
    #[error("talking to the daemon: {0}")]
    Io(#[from] io::Error),
    /// The daemon refused the request.
    #[error("{0}")]
    Api(ApiError),
    /// The daemon's answer did not make sense.
    #[error("the daemon answered something unexpected: {0}")]
    Protocol(String),
}

/// One connection to a daemon.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// A line begun but cut by a read timeout: finished by the next read.
    partial: Vec<u8>,
}

impl Client {
    /// Connects to the daemon serving `socket`.
    pub fn connect(socket: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                ClientError::NoDaemon(socket.parent().unwrap_or(socket).to_path_buf())
            }
            _ => ClientError::Io(e),
        })?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            partial: Vec::new(),
        })
    }

    /// Bounds how long a read waits (`None`: forever).
    pub fn set_timeout(&self, t: Option<Duration>) -> Result<(), ClientError> {
        self.writer.set_read_timeout(t)?;
        Ok(())
    }

    /// Sends `req` and returns its result.
    pub fn call(&mut self, req: &Request) -> Result<serde_json::Value, ClientError> {
        let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        match self.next_answer()? {
            Answer::Ok(v) => Ok(v),
            Answer::Error(e) => Err(ClientError::Api(e)),
            Answer::Event(_) => Err(ClientError::Protocol("an event".into())),
        }
    }

    /// Turns this connection into the daemon's event stream.
    pub fn subscribe(mut self) -> Result<Events, ClientError> {
        self.call(&Request::Events {})?;
        Ok(Events(self))
    }

    fn next_answer(&mut self) -> Result<Answer, ClientError> {
        let room = MAX_ANSWER.saturating_sub(self.partial.len()) as u64;
        // On a timeout the bytes read so far stay in `partial`.
        let n = (&mut self.reader)
            .take(room)
            .read_until(b'\n', &mut self.partial)?;
        let line = std::mem::take(&mut self.partial);
        if n == 0 && line.is_empty() {
            return Err(ClientError::Protocol(
                "the daemon closed the connection".into(),
            ));
        }
        if line.last() != Some(&b'\n') {
            return Err(ClientError::Protocol("an answer cut short".into()));
        }
        serde_json::from_slice(&line).map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

/// The daemon's events, one JSON object each.
#[derive(Debug)]
pub struct Events(Client);

impl Events {
    /// The next event; waits at most the client's timeout.
    pub fn next_event(&mut self) -> Result<serde_json::Value, ClientError> {
        match self.0.next_answer()? {
            Answer::Event(v) => Ok(v),
            Answer::Error(e) => Err(ClientError::Api(e)),
            Answer::Ok(_) => Err(ClientError::Protocol(
                "an answer in the event stream".into(),
            )),
        }
    }

    /// Bounds how long [`Self::next_event`] waits (`None`: forever).
    pub fn set_timeout(&self, t: Option<Duration>) -> Result<(), ClientError> {
        self.0.set_timeout(t)
    }
}
