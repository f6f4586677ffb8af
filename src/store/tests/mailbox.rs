use super::{data_key, fresh};
use crate::store::Store;

#[test]
fn deposit_fetch_ack_and_expire() {
    let (_dir, store) = fresh();
    let mb = store.mailboxes();
    let (a, b) = ([1; 32], [2; 32]);
    let seqs = mb
        .deposit(
            &a,
            &[([1; 16], 500, vec![1; 100]), ([2; 16], 900, vec![2; 50])],
            10,
        )
        .unwrap();
    assert_eq!(seqs, vec![0, 1]);
    assert_eq!(
        mb.deposit(&a, &[([3; 16], 900, vec![3; 10])], 11).unwrap(),
        vec![2]
    );
    mb.deposit(&b, &[([4; 16], 900, vec![4; 10])], 12).unwrap();
    let stats = mb.stats(&a).unwrap();
    assert_eq!((stats.count, stats.bytes, stats.next_seq), (3, 160, 3));
    let all = mb.fetch(&a, None, 10).unwrap();
    assert_eq!(
        all.iter().map(|h| h.envelope_id[0]).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(mb.fetch(&a, Some(0), 1).unwrap()[0].seq, 1);
    assert!(mb.fetch(&a, Some(u64::MAX), 10).unwrap().is_empty());
    assert_eq!(
        mb.fetch(&b, None, 10).unwrap().len(),
        1,
        "mailboxes are separate"
    );
    assert_eq!(mb.ack(&a, &[1, 1, 7]).unwrap(), 1);
    assert_eq!(mb.stats(&a).unwrap().count, 2);
    // Sequence numbers keep growing after deletions.
    assert_eq!(
        mb.deposit(&a, &[([5; 16], 900, vec![])], 13).unwrap(),
        vec![3]
    );
    let expired = mb.purge_expired(500).unwrap();
    assert_eq!(expired, vec![(a, [1; 16])]);
    let stats = mb.stats(&a).unwrap();
    assert_eq!((stats.count, stats.bytes), (2, 10));
}

#[test]
fn held_mail_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = data_key(1);
    {
        let store = Store::open(dir.path(), &key).unwrap();
        store
            .mailboxes()
            .deposit(&[9; 32], &[([1; 16], 900, b"sealed".to_vec())], 1)
            .unwrap();
        store.flush().unwrap();
    }
    let store = Store::open(dir.path(), &key).unwrap();
    let held = store.mailboxes().fetch(&[9; 32], None, 10).unwrap();
    assert_eq!(held[0].envelope, b"sealed");
    assert_eq!(
        store
            .mailboxes()
            .deposit(&[9; 32], &[([2; 16], 900, vec![])], 2)
            .unwrap(),
        vec![1]
    );
}
