use super::data_key;
use crate::store::Store;

#[test]
fn outbox_survives_reopen_in_order_with_retry_state() {
    let dir = tempfile::tempdir().unwrap();
    let key = data_key(1);
    let seqs: Vec<u64>;
    {
        let store = Store::open(dir.path(), &key).unwrap();
        let o = store.outbox();
        seqs = (0..10u8)
            .map(|i| {
                o.push([i; 16], [9; 32], vec![i; 100], 1_000, 2_000)
                    .unwrap()
                    .seq
            })
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        assert!(o.record_attempt(seqs[0], 1_030).unwrap());
        assert!(o.record_attempt(seqs[0], 1_090).unwrap());
        assert!(o.ack(seqs[5]).unwrap());
        store.flush().unwrap();
    }
    let store = Store::open(dir.path(), &key).unwrap();
    let o = store.outbox();
    let all = o.all().unwrap();
    assert_eq!(all.len(), 9);
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [&seqs[..5], &seqs[6..]].concat()
    );
    assert_eq!(all[0].attempts, 2);
    assert_eq!(all[0].next_attempt_at, 1_090);
    assert_eq!(all[1].envelope, vec![1; 100]);
    // Due now: all but the one backing off.
    assert_eq!(o.due(1_050, 100).unwrap().len(), 8);
    assert_eq!(o.due(1_050, 3).unwrap().len(), 3);
    // New entries after a restart still sort after the old ones.
    let later = o.push([99; 16], [9; 32], vec![], 1_100, 1_500).unwrap();
    assert!(later.seq > *seqs.last().unwrap());
    // An end-to-end receipt by another path clears it.
    assert_eq!(o.ack_message(&[3; 16], &[9; 32]).unwrap(), 1);
    assert!(!o.record_attempt(seqs[3], 0).unwrap());
    // Expiry hands back what was not delivered.
    let expired = o.take_expired(1_500).unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].msg_id, [99; 16]);
    assert_eq!(o.take_expired(2_000).unwrap().len(), 8);
    assert!(o.is_empty());
}
