//! Relay mode (`meshchat relay`): store-and-forward mailboxes for offline
//! devices on `/meshchat/mailbox/1`, prekey bundle hosting, and the
//! circuit-relay v2 server.
//!
//! Built so far: the wire messages of the mailbox protocol ([`proto`]):
//! deposits answered by signed custody receipts, fetches and acks signed
//! with the mailbox key, refusals with a reason. The relay service and the
//! node's client side come next.

pub mod proto;
