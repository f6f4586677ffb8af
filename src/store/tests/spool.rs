use std::os::unix::fs::FileExt;

use super::data_key;
use crate::store::{Error, Expired, Removed, Spool, ToHold, Totals};

fn hold(mailbox: [u8; 32], id: u8, expires_at: u64, len: usize) -> ToHold {
    ToHold {
        mailbox,
        digest: [id; 16],
        expires_at,
        envelope: vec![id; len],
    }
}

fn ids(held: &[crate::store::Held]) -> Vec<u8> {
    held.iter().map(|h| h.digest[0]).collect()
}

/// A spool holding one synced envelope (id 1, mailbox [1; 32]), closed.
fn one_held() -> (tempfile::TempDir, crate::crypto::DataKey) {
    let dir = tempfile::tempdir().unwrap();
    let key = data_key(1);
    let mut sp = Spool::open(dir.path(), &key).unwrap();
    sp.deposit(&[hold([1; 32], 1, 900, 5)], 1).unwrap();
    sp.sync().unwrap();
    (dir, key)
}

fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn deposit_fetch_ack_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let mut sp = Spool::open(dir.path(), &data_key(1)).unwrap();
    let (a, b) = ([1; 32], [2; 32]);
    let d = sp
        .deposit(&[hold(a, 1, 500, 100), hold(a, 2, 900, 50)], 10)
        .unwrap();
    assert_eq!((d.seqs, d.new, d.new_bytes), (vec![0, 1], 2, 150));
    // One deposit may span mailboxes; seqs come from one counter.
    let d = sp
        .deposit(&[hold(a, 3, 900, 10), hold(b, 4, 900, 10)], 11)
        .unwrap();
    assert_eq!(d.seqs, vec![2, 3]);
    let stats = sp.stats(&a);
    assert_eq!((stats.count, stats.bytes), (3, 160));
    let all = sp.fetch(&a, None, 10, 0).unwrap();
    assert_eq!(ids(&all), vec![1, 2, 3]);
    assert_eq!(all[0].deposited_at, 10);
    assert_eq!(all[0].envelope, vec![1; 100]);
    assert_eq!(sp.fetch(&a, Some(0), 1, 0).unwrap()[0].seq, 1);
    assert_eq!(ids(&sp.fetch(&a, Some(1), 10, 0).unwrap()), vec![3]);
    assert!(sp.fetch(&a, Some(u64::MAX), 10, 0).unwrap().is_empty());
    assert_eq!(ids(&sp.fetch(&b, None, 10, 0).unwrap()), vec![4]);
    // Past its expiry an envelope is no longer handed out, even before
    // the purge.
    assert_eq!(sp.fetch(&a, None, 10, 500).unwrap().len(), 2);
    assert_eq!(
        sp.ack(&a, &[1, 1, 7, 3]).unwrap(),
        Removed {
            count: 1,
            bytes: 50
        },
        "seq 3 is b's: a's owner cannot remove it"
    );
    assert_eq!(sp.stats(&a).count, 2);
    assert_eq!(ids(&sp.fetch(&a, Some(0), 10, 0).unwrap()), vec![3]);
    // Sequence numbers keep growing after deletions.
    assert_eq!(sp.deposit(&[hold(a, 5, 900, 0)], 13).unwrap().seqs, vec![4]);
    let expired = sp.purge_expired(500, 100).unwrap();
    assert_eq!(
        expired,
        vec![Expired {
            mailbox: a,
            digest: [1; 16],
            bytes: 100
        }]
    );
    assert_eq!(
        sp.stats(&a),
        crate::store::MailboxStats {
            count: 2,
            bytes: 10
        }
    );
    assert_eq!(
        sp.totals(),
        Totals {
            mailboxes: 2,
            envelopes: 3,
            bytes: 20
        }
    );
    assert!(sp.purge_expired(500, 100).unwrap().is_empty());
}

#[test]
fn an_envelope_deposited_twice_is_held_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut sp = Spool::open(dir.path(), &data_key(1)).unwrap();
    let a = [1; 32];
    sp.deposit(&[hold(a, 1, 900, 10)], 1).unwrap();
    let d = sp
        .deposit(
            &[
                hold(a, 1, 900, 10),
                hold(a, 2, 900, 10),
                hold(a, 2, 900, 10),
            ],
            2,
        )
        .unwrap();
    assert_eq!((d.seqs, d.new), (vec![0, 1, 1], 1));
    assert_eq!(sp.stats(&a).count, 2);
    // Once acknowledged, the id may come again (a new copy is new mail).
    sp.ack(&a, &[0]).unwrap();
    assert_eq!(sp.deposit(&[hold(a, 1, 900, 10)], 3).unwrap().new, 1);
}

/// The same bytes deposited again to be kept longer than the copy held
/// (the relay keeps envelopes less long than they live, and the first
/// copy came earlier) are held again, so the new receipt does not vouch
/// for a copy the next purge drops; the older copy going leaves the newer
/// one found by its digest.
#[test]
fn an_envelope_deposited_again_to_be_kept_longer_is_held_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut sp = Spool::open(dir.path(), &data_key(1)).unwrap();
    let a = [1; 32];
    assert_eq!(sp.deposit(&[hold(a, 1, 100, 10)], 1).unwrap().seqs, vec![0]);
    assert!(sp.holds(&a, &[1; 16], 100));
    assert!(!sp.holds(&a, &[1; 16], 200));
    let d = sp.deposit(&[hold(a, 1, 200, 10)], 2).unwrap();
    assert_eq!((d.seqs, d.new), (vec![1], 1));
    // Kept no longer than what is held: the same copy.
    assert_eq!(sp.deposit(&[hold(a, 1, 150, 10)], 3).unwrap().seqs, vec![1]);
    assert_eq!(sp.stats(&a).count, 2);
    sp.ack(&a, &[0]).unwrap();
    assert!(sp.holds(&a, &[1; 16], 200));
    assert_eq!(sp.deposit(&[hold(a, 1, 200, 10)], 4).unwrap().seqs, vec![1]);
    // The first copy expires, the second is still handed out.
    assert_eq!(ids(&sp.fetch(&a, None, 10, 150).unwrap()), vec![1]);
}

#[test]
fn purge_takes_a_bounded_number_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut sp = Spool::open(dir.path(), &data_key(1)).unwrap();
    let items: Vec<ToHold> = (1..=5u8)
        .map(|i| hold([i; 32], i, 100 - u64::from(i), 1))
        .collect();
    sp.deposit(&items, 1).unwrap();
    let first = sp.purge_expired(1000, 2).unwrap();
    assert_eq!(
        first.iter().map(|e| e.digest[0]).collect::<Vec<_>>(),
        vec![5, 4]
    );
    assert_eq!(sp.purge_expired(1000, 10).unwrap().len(), 3);
    assert_eq!(sp.totals(), Totals::default());
}

#[test]
fn held_mail_and_removals_survive_a_restart_and_seqs_never_go_back() {
    let dir = tempfile::tempdir().unwrap();
    let key = data_key(1);
    {
        let mut sp = Spool::open(dir.path(), &key).unwrap();
        let mut h = hold([9; 32], 1, 900, 0);
        h.envelope = b"sealed".to_vec();
        sp.deposit(&[h, hold([9; 32], 2, 900, 3), hold([8; 32], 3, 900, 4)], 1)
            .unwrap();
        sp.ack(&[9; 32], &[1]).unwrap();
        sp.ack(&[8; 32], &[2]).unwrap();
        sp.sync().unwrap();
    }
    let mut sp = Spool::open(dir.path(), &key).unwrap();
    let held = sp.fetch(&[9; 32], None, 10, 0).unwrap();
    assert_eq!(ids(&held), vec![1]);
    assert_eq!(held[0].envelope, b"sealed");
    assert_eq!(
        sp.totals(),
        Totals {
            mailboxes: 1,
            envelopes: 1,
            bytes: 6
        }
    );
    // A second deposit of the same id is still recognised.
    assert_eq!(sp.deposit(&[hold([9; 32], 1, 900, 0)], 2).unwrap().new, 0);
    // Numbers go on past a margin: one handed out by a fetch before a
    // crash may have been lost with its record, and must not be reused.
    let third = sp.deposit(&[hold([9; 32], 4, 900, 0)], 2).unwrap().seqs;
    assert_eq!(third, vec![3 + (1 << 32)]);
    // Everything gone and the files reclaimed: the counter still goes on.
    sp.ack(&[9; 32], &[0, third[0]]).unwrap();
    sp.sync().unwrap();
    drop(sp);
    let mut sp = Spool::open(dir.path(), &key).unwrap();
    assert_eq!(sp.totals(), Totals::default());
    assert_eq!(
        sp.deposit(&[hold([9; 32], 5, 900, 0)], 3).unwrap().seqs,
        vec![third[0] + 1 + (1 << 32)]
    );
}

#[test]
fn a_number_handed_out_but_lost_in_a_crash_is_not_used_again() {
    let dir = tempfile::tempdir().unwrap();
    let key = data_key(1);
    let (lost, synced) = {
        let mut sp = Spool::open(dir.path(), &key).unwrap();
        sp.deposit(&[hold([9; 32], 1, 900, 0)], 1).unwrap();
        sp.sync().unwrap();
        let synced = sp.file_bytes();
        // Deposited and fetched (a fetch answer waits for no sync), then
        // the process dies before its sync.
        let seq = sp.deposit(&[hold([9; 32], 2, 900, 0)], 1).unwrap().seqs[0];
        assert_eq!(ids(&sp.fetch(&[9; 32], None, 10, 0).unwrap()), vec![1, 2]);
        std::mem::forget(sp);
        (seq, synced)
    };
    // The unsynced write never reached the disk.
    let seg = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .write_all_at(&vec![0; (len - synced) as usize], synced)
        .unwrap();
    for restart in 0..2u8 {
        let mut sp = Spool::open(dir.path(), &key).unwrap();
        assert_eq!(ids(&sp.fetch(&[9; 32], None, 10, 0).unwrap()), vec![1]);
        let next = sp
            .deposit(&[hold([8; 32], 3 + restart, 900, 0)], 2)
            .unwrap()
            .seqs[0];
        assert!(next > lost, "restart {restart}: {next} after {lost}");
        // The device acknowledges the number it was handed: nothing else
        // goes with it.
        sp.ack(&[8; 32], &[lost]).unwrap();
        assert_eq!(
            sp.fetch(&[8; 32], None, 10, 0).unwrap().len(),
            usize::from(restart) + 1
        );
        sp.sync().unwrap();
    }
}

#[test]
fn a_torn_tail_is_cut_and_damage_elsewhere_or_another_key_opens_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = data_key(1);
    let end = {
        let mut sp = Spool::open(dir.path(), &key).unwrap();
        sp.deposit(&[hold([1; 32], 1, 900, 50), hold([1; 32], 2, 900, 50)], 1)
            .unwrap();
        sp.sync().unwrap();
        sp.file_bytes()
    };
    let seg = segments(dir.path()).pop().unwrap();
    let whole = std::fs::read(&seg).unwrap();
    // The records are followed by zero-filled room.
    assert!(whole.len() as u64 > end);
    assert!(whole[end as usize..].iter().all(|&b| b == 0));
    // A crash in the middle of a later write (never synced, never
    // acknowledged): half a record in the room.
    let e = end as usize;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .write_all_at(&whole[e - 60..e - 20], end)
        .unwrap();
    {
        let mut sp = Spool::open(dir.path(), &key).unwrap();
        assert_eq!(sp.totals().envelopes, 2);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), end);
        // And it goes on appending where the good records end.
        sp.deposit(&[hold([1; 32], 3, 900, 5)], 2).unwrap();
        sp.sync().unwrap();
    }
    assert_eq!(
        ids(&Spool::open(dir.path(), &key)
            .unwrap()
            .fetch(&[1; 32], None, 10, 0)
            .unwrap()),
        vec![1, 2, 3]
    );
    // Another key: refused, nothing cut.
    let len = std::fs::metadata(&seg).unwrap().len();
    assert!(matches!(
        Spool::open(dir.path(), &data_key(2)),
        Err(Error::WrongKey { .. })
    ));
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
    // A flipped byte in a closed (not the newest) segment is damage.
    let dir = tempfile::tempdir().unwrap();
    {
        let mut sp = Spool::open_sized(dir.path(), &key, 4096).unwrap();
        for i in 0..4 {
            sp.deposit(&[hold([1; 32], i, 900, 2048)], 1).unwrap();
        }
        sp.sync().unwrap();
    }
    let all = segments(dir.path());
    assert!(all.len() >= 2, "{all:?}");
    let mut bytes = std::fs::read(&all[0]).unwrap();
    let at = bytes.len() - 30;
    bytes[at] ^= 1;
    std::fs::write(&all[0], &bytes).unwrap();
    assert!(matches!(
        Spool::open(dir.path(), &key),
        Err(Error::Damaged { .. })
    ));
}

#[test]
fn compaction_reclaims_space_and_keeps_every_live_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let key = data_key(1);
    // Segments of 256 KiB and envelopes of 4 KiB: fill a dozen segments,
    // keep every 16th envelope of mailbox a and all of b.
    const SEGMENT: u64 = 256 * 1024;
    let mut sp = Spool::open_sized(dir.path(), &key, SEGMENT).unwrap();
    let (a, b) = ([1; 32], [2; 32]);
    let per_segment = (SEGMENT / 4096) as usize;
    let mut n = 0u64;
    let mut keep: Vec<u64> = Vec::new();
    for _ in 0..(12 * per_segment / 64) {
        let batch: Vec<ToHold> = (0..64)
            .map(|i| {
                n += 1;
                let mut h = hold(if i == 0 { b } else { a }, 0, 900, 4096);
                h.digest[..8].copy_from_slice(&n.to_be_bytes());
                h
            })
            .collect();
        let d = sp.deposit(&batch, 1).unwrap();
        let drop: Vec<u64> = d
            .seqs
            .iter()
            .enumerate()
            .filter(|(i, s)| *i != 0 && **s % 16 != 0)
            .map(|(_, s)| *s)
            .collect();
        keep.extend(d.seqs.iter().filter(|s| !drop.contains(s)));
        sp.ack(&a, &drop).unwrap();
        sp.sync().unwrap();
    }
    let before = sp.file_bytes();
    assert!(segments(dir.path()).len() >= 4);
    while sp.compact().unwrap() {}
    let after = sp.file_bytes();
    assert!(after < before / 2, "{after} of {before}");
    let live = |sp: &Spool| {
        let mut v: Vec<u64> = sp
            .fetch(&a, None, usize::MAX, 0)
            .unwrap()
            .into_iter()
            .chain(sp.fetch(&b, None, usize::MAX, 0).unwrap())
            .map(|h| h.seq)
            .collect();
        v.sort_unstable();
        v
    };
    keep.sort_unstable();
    assert_eq!(live(&sp), keep);
    drop(sp);
    let sp = Spool::open_sized(dir.path(), &key, SEGMENT).unwrap();
    assert_eq!(live(&sp), keep, "the same after a restart");
    assert_eq!(sp.totals().envelopes, keep.len() as u64);
}

#[test]
fn a_zeroed_new_segment_is_dropped_and_an_oversized_one_is_not_read() {
    let (dir, key) = one_held();
    // A start closes that segment and begins another; a crash while it
    // was created, on a file system that kept its size but not its bytes.
    drop(Spool::open(dir.path(), &key).unwrap());
    let zeroed = segments(dir.path()).pop().unwrap();
    std::fs::write(&zeroed, vec![0u8; 64]).unwrap();
    {
        let sp = Spool::open(dir.path(), &key).unwrap();
        assert_eq!(ids(&sp.fetch(&[1; 32], None, 10, 0).unwrap()), vec![1]);
    }
    // (Removed, and a new one made in its place.)
    assert!(std::fs::read(&zeroed).unwrap().iter().any(|&b| b != 0));
    // A segment file larger than any the spool writes: refused before it
    // is read (sparse here, so the test writes nothing).
    let seg = segments(dir.path()).pop().unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let e = Spool::open(dir.path(), &key).err().unwrap();
    assert!(matches!(e, Error::Damaged { .. }), "{e}");
}

#[test]
fn starts_with_nothing_written_leave_no_segments_behind() {
    let (dir, key) = one_held();
    for _ in 0..5 {
        drop(Spool::open(dir.path(), &key).unwrap());
    }
    // The one with the record, and the newest start's.
    assert_eq!(segments(dir.path()).len(), 2);
    let mut sp = Spool::open(dir.path(), &key).unwrap();
    assert_eq!(ids(&sp.fetch(&[1; 32], None, 10, 0).unwrap()), vec![1]);
    let next = sp.deposit(&[hold([1; 32], 2, 900, 5)], 2).unwrap().seqs[0];
    assert!(next > 6 * (1 << 32), "{next}");
}

/// A fetch bounded in bytes reads (and decrypts) nothing past the first
/// envelope over the bound: a mailbox full of large envelopes costs a
/// fetch what it hands out, not what is held.
#[test]
fn a_fetch_bounded_in_bytes_reads_nothing_past_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let key = data_key(1);
    let mut sp = Spool::open(dir.path(), &key).unwrap();
    for i in 1..=8 {
        sp.deposit(&[hold([1; 32], i, 900, 1000)], 1).unwrap();
    }
    sp.sync().unwrap();
    let end = sp.file_bytes();
    // Damage the newest record on disk, behind the spool's back: a read
    // of it fails.
    let seg = segments(dir.path()).pop().unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, end - 30).unwrap();
    file.write_all_at(&[byte[0] ^ 1], end - 30).unwrap();
    let within = sp.fetch_within(&[1; 32], None, (8, 2500), 0).unwrap();
    assert_eq!(ids(&within), vec![1, 2, 3], "stops after the one over");
    let all = sp.fetch(&[1; 32], None, 8, 0);
    assert!(all.is_err(), "{:?}", all.map(|h| ids(&h)));
}
