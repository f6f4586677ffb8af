use super::{data_key, fresh};
use crate::store::{Expired, Removed, Store, ToHold, Totals};

fn hold(mailbox: [u8; 32], id: u8, expires_at: u64, len: usize) -> ToHold {
    ToHold {
        mailbox,
        envelope_id: [id; 16],
        expires_at,
        envelope: vec![id; len],
    }
}

#[test]
fn deposit_fetch_ack_and_expire() {
    let (_dir, store) = fresh();
    let mb = store.mailboxes();
    let (a, b) = ([1; 32], [2; 32]);
    let d = mb
        .deposit(&[hold(a, 1, 500, 100), hold(a, 2, 900, 50)], 10)
        .unwrap();
    assert_eq!((d.seqs, d.new, d.new_bytes), (vec![0, 1], 2, 150));
    // One deposit may span mailboxes; each numbers its own.
    let d = mb
        .deposit(&[hold(a, 3, 900, 10), hold(b, 4, 900, 10)], 11)
        .unwrap();
    assert_eq!(d.seqs, vec![2, 0]);
    let stats = mb.stats(&a).unwrap();
    assert_eq!((stats.count, stats.bytes, stats.next_seq), (3, 160, 3));
    let all = mb.fetch(&a, None, 10, 0).unwrap();
    assert_eq!(
        all.iter().map(|h| h.envelope_id[0]).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(mb.fetch(&a, Some(0), 1, 0).unwrap()[0].seq, 1);
    assert!(mb.fetch(&a, Some(u64::MAX), 10, 0).unwrap().is_empty());
    assert_eq!(
        mb.fetch(&b, None, 10, 0).unwrap().len(),
        1,
        "mailboxes are separate"
    );
    // Past its expiry an envelope is no longer handed out, even before
    // the purge.
    assert_eq!(mb.fetch(&a, None, 10, 500).unwrap().len(), 2);
    assert_eq!(
        mb.ack(&a, &[1, 1, 7]).unwrap(),
        Removed {
            count: 1,
            bytes: 50
        }
    );
    assert_eq!(mb.stats(&a).unwrap().count, 2);
    // Sequence numbers keep growing after deletions.
    assert_eq!(mb.deposit(&[hold(a, 5, 900, 0)], 13).unwrap().seqs, vec![3]);
    let expired = mb.purge_expired(500, 100).unwrap();
    assert_eq!(
        expired,
        vec![Expired {
            mailbox: a,
            envelope_id: [1; 16],
            bytes: 100
        }]
    );
    let stats = mb.stats(&a).unwrap();
    assert_eq!((stats.count, stats.bytes), (2, 10));
    assert_eq!(
        mb.totals().unwrap(),
        Totals {
            mailboxes: 2,
            envelopes: 3,
            bytes: 20
        }
    );
    assert!(mb.purge_expired(500, 100).unwrap().is_empty());
}

#[test]
fn an_envelope_deposited_twice_is_held_once() {
    let (_dir, store) = fresh();
    let mb = store.mailboxes();
    let a = [1; 32];
    mb.deposit(&[hold(a, 1, 900, 10)], 1).unwrap();
    let d = mb
        .deposit(&[hold(a, 1, 900, 10), hold(a, 2, 900, 10)], 2)
        .unwrap();
    assert_eq!((d.seqs, d.new), (vec![0, 1], 1));
    assert_eq!(mb.stats(&a).unwrap().count, 2);
    // Once acknowledged, the id may come again (a new copy is new mail).
    mb.ack(&a, &[0]).unwrap();
    assert_eq!(mb.deposit(&[hold(a, 1, 900, 10)], 3).unwrap().new, 1);
}

#[test]
fn purge_takes_a_bounded_number_oldest_first() {
    let (_dir, store) = fresh();
    let mb = store.mailboxes();
    let items: Vec<ToHold> = (1..=5u8)
        .map(|i| hold([i; 32], i, 100 - u64::from(i), 1))
        .collect();
    mb.deposit(&items, 1).unwrap();
    let first = mb.purge_expired(1000, 2).unwrap();
    assert_eq!(
        first.iter().map(|e| e.envelope_id[0]).collect::<Vec<_>>(),
        vec![5, 4]
    );
    assert_eq!(mb.purge_expired(1000, 10).unwrap().len(), 3);
    assert_eq!(mb.totals().unwrap(), Totals::default());
}

#[test]
fn held_mail_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = data_key(1);
    {
        let store = Store::open(dir.path(), &key).unwrap();
        let mut h = hold([9; 32], 1, 900, 0);
        h.envelope = b"sealed".to_vec();
        store.mailboxes().deposit(&[h], 1).unwrap();
        store.flush().unwrap();
    }
    let store = Store::open(dir.path(), &key).unwrap();
    let held = store.mailboxes().fetch(&[9; 32], None, 10, 0).unwrap();
    assert_eq!(held[0].envelope, b"sealed");
    assert_eq!(
        store
            .mailboxes()
            .deposit(&[hold([9; 32], 2, 900, 0)], 2)
            .unwrap()
            .seqs,
        vec![1]
    );
}
