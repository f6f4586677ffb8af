//! The `/meshchat/direct/1` codec: pinned bytes, limits checked before
//! allocation, malformed input refused, random input never panicking.

use std::pin::Pin;
use std::task::{Context, Poll};

use libp2p::futures::io::AsyncRead;
use libp2p::futures::{AsyncReadExt, executor::block_on};
use proptest::prelude::*;

use crate::node::net::DirectError;
use crate::node::net::direct::{self, Ack, Batch, FrameStatus, Limits};

fn small() -> Limits {
    Limits {
        max_frames: 4,
        max_frame_len: 16,
        max_batch_bytes: 40,
    }
}

/// Reader that counts the bytes handed out and then produces zeros forever:
/// a decoder that trusted a huge length prefix would never finish.
struct Endless<'a> {
    prefix: &'a [u8],
    served: usize,
}

impl AsyncRead for Endless<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = buf.len();
        for b in buf.iter_mut() {
            *b = self.prefix.get(self.served).copied().unwrap_or(0);
            self.served += 1;
        }
        Poll::Ready(Ok(n))
    }
}

#[test]
fn direct_request_bytes_are_pinned() {
    let batch = Batch::new(vec![b"ab".to_vec(), Vec::new(), vec![0xff]]);
    let bytes = batch.encode(&Limits::default()).unwrap();
    assert_eq!(
        bytes,
        [
            1, 0, 3, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0, 0, 0, 0, 1, 0xff
        ]
    );
    assert_eq!(Batch::decode(&bytes, &Limits::default()).unwrap(), batch);
}

#[test]
fn direct_ack_bytes_are_pinned() {
    let ack = Ack {
        statuses: vec![
            FrameStatus::Accepted,
            FrameStatus::Duplicate,
            FrameStatus::Rejected,
        ],
    };
    let bytes = ack.encode(&Limits::default()).unwrap();
    assert_eq!(bytes, [1, 0, 3, 0, 1, 2]);
    assert_eq!(Ack::decode(&bytes, &Limits::default()).unwrap(), ack);
    assert_eq!(ack.delivered(), 2);
    assert_eq!(
        Ack::decode(&[1, 0, 0], &Limits::default()).unwrap(),
        Ack::default()
    );
}

#[test]
fn huge_length_prefix_fails_before_reading_or_allocating() {
    // One frame announced at 4 GiB - 1, followed by an endless stream.
    let mut io = Endless {
        prefix: &[1, 0, 1, 0xff, 0xff, 0xff, 0xff],
        served: 0,
    };
    let err = block_on(direct::read_batch(&mut io, &Limits::default())).unwrap_err();
    assert_eq!(
        err,
        DirectError::FrameTooLarge {
            index: 0,
            len: u32::MAX as usize,
            max: direct::DEFAULT_MAX_FRAME
        }
    );
    // Only the 3-byte header and the 4-byte prefix were consumed.
    assert_eq!(io.served, 7);
    let io_err = std::io::Error::from(err);
    assert_eq!(io_err.kind(), std::io::ErrorKind::InvalidData);
    assert!(io_err.to_string().contains("4294967295"), "{io_err}");
}

#[test]
fn batch_total_is_checked_before_each_frame() {
    // Frames of 16 bytes each fit one by one, but the third passes 40.
    let mut prefix = vec![1, 0, 3];
    for _ in 0..2 {
        prefix.extend_from_slice(&16u32.to_be_bytes());
        prefix.extend_from_slice(&[7; 16]);
    }
    prefix.extend_from_slice(&16u32.to_be_bytes());
    let consumed = prefix.len();
    let mut io = Endless {
        prefix: &prefix,
        served: 0,
    };
    let err = block_on(direct::read_batch(&mut io, &small())).unwrap_err();
    assert_eq!(err, DirectError::BatchTooLarge { total: 48, max: 40 });
    assert_eq!(io.served, consumed);
}

#[test]
fn too_many_frames_fails_on_the_header() {
    let mut io = Endless {
        prefix: &[1, 0xff, 0xff],
        served: 0,
    };
    let err = block_on(direct::read_batch(&mut io, &small())).unwrap_err();
    assert_eq!(
        err,
        DirectError::TooManyFrames {
            what: "direct request",
            count: 65535,
            max: 4
        }
    );
    assert_eq!(io.served, 3);
    let err = Ack::decode(&[1, 0, 5, 0, 0, 0, 0, 0], &small()).unwrap_err();
    assert!(matches!(err, DirectError::TooManyFrames { count: 5, .. }));
}

#[test]
fn unknown_versions_are_refused() {
    let err = Batch::decode(&[2, 0, 1, 0, 0, 0, 0], &small()).unwrap_err();
    assert_eq!(
        err,
        DirectError::UnknownVersion {
            what: "direct request",
            got: 2,
            expected: 1
        }
    );
    assert_eq!(
        err.to_string(),
        "direct request: unknown version 2, expected 1"
    );
    let err = Ack::decode(&[0, 0, 0], &small()).unwrap_err();
    assert!(matches!(err, DirectError::UnknownVersion { got: 0, .. }));
}

#[test]
fn trailing_truncated_empty_and_bad_status_are_refused() {
    let good = Batch::new(vec![b"hey".to_vec()]).encode(&small()).unwrap();
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(
        Batch::decode(&trailing, &small()).unwrap_err(),
        DirectError::TrailingBytes {
            what: "direct request"
        }
    );
    for cut in 0..good.len() {
        assert_eq!(
            Batch::decode(&good[..cut], &small()).unwrap_err(),
            DirectError::Truncated {
                what: "direct request"
            },
            "cut at {cut}"
        );
    }
    assert_eq!(
        Batch::decode(&[1, 0, 0], &small()).unwrap_err(),
        DirectError::Empty
    );
    assert_eq!(
        Ack::decode(&[1, 0, 1, 7], &small()).unwrap_err(),
        DirectError::UnknownStatus(7)
    );
    assert!(matches!(
        Ack::decode(&[1, 0, 1, 0, 0], &small()).unwrap_err(),
        DirectError::TrailingBytes { .. }
    ));
}

#[test]
fn encoding_enforces_the_same_limits() {
    let limits = small();
    assert_eq!(
        Batch::new(vec![vec![0; 17]]).encode(&limits).unwrap_err(),
        DirectError::FrameTooLarge {
            index: 0,
            len: 17,
            max: 16
        }
    );
    assert!(matches!(
        Batch::new(vec![vec![0; 1]; 5]).encode(&limits),
        Err(DirectError::TooManyFrames { count: 5, .. })
    ));
    assert!(matches!(
        Batch::new(vec![vec![0; 16]; 3]).encode(&limits),
        Err(DirectError::BatchTooLarge { .. })
    ));
    assert_eq!(Batch::default().encode(&limits), Err(DirectError::Empty));
    assert!(Ack::all(FrameStatus::Accepted, 5).encode(&limits).is_err());
}

#[test]
fn codec_reads_what_it_writes_over_a_stream() {
    use libp2p::request_response::Codec as _;
    let mut codec = direct::Codec::new(small());
    let batch = Batch::new(vec![b"one".to_vec(), b"two".to_vec()]);
    let mut wire = libp2p::futures::io::Cursor::new(Vec::new());
    block_on(codec.write_request(&direct::PROTOCOL, &mut wire, batch.clone())).unwrap();
    let mut reader = &wire.get_ref()[..];
    let back = block_on(codec.read_request(&direct::PROTOCOL, &mut reader)).unwrap();
    assert_eq!(back, batch);
    // An over-limit request is refused on the writing side already.
    let big = Batch::new(vec![vec![0; 17]]);
    let err = block_on(codec.write_request(&direct::PROTOCOL, &mut wire, big)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        for limits in [small(), Limits::default()] {
            if let Ok(batch) = Batch::decode(&bytes, &limits) {
                prop_assert_eq!(batch.encode(&limits).unwrap(), bytes.clone());
            }
            if let Ok(ack) = Ack::decode(&bytes, &limits) {
                prop_assert_eq!(ack.encode(&limits).unwrap(), bytes.clone());
            }
        }
    }

    #[test]
    fn versioned_prefix_with_random_tail_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut bytes = vec![direct::VERSION];
        bytes.extend_from_slice(&tail);
        let _ = Batch::decode(&bytes, &small());
        let _ = Ack::decode(&bytes, &small());
    }

    #[test]
    fn batches_round_trip(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8)) {
        let batch = Batch::new(frames);
        let bytes = batch.encode(&Limits::default()).unwrap();
        prop_assert_eq!(Batch::decode(&bytes, &Limits::default()).unwrap(), batch);
    }
}

#[test]
fn read_helpers_stop_at_the_end_of_the_stream() {
    // read_batch leaves nothing behind after a good request.
    let bytes = Batch::new(vec![b"x".to_vec()]).encode(&small()).unwrap();
    let mut reader = &bytes[..];
    block_on(direct::read_batch(&mut reader, &small())).unwrap();
    let mut rest = Vec::new();
    block_on(reader.read_to_end(&mut rest)).unwrap();
    assert!(rest.is_empty());
}
