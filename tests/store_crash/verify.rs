//! Reopening a killed child's store and checking what survived.

use super::*;

/// Findings of one verification pass.
#[derive(Debug, Default)]
pub(super) struct Check {
    /// Reported-flushed messages missing or damaged.
    pub(super) losses: Vec<String>,
    /// Inconsistencies that are not a lost message (order, duplicates,
    /// index, conversation records).
    pub(super) corruption: Vec<String>,
    /// Counters present per round.
    pub(super) present: BTreeMap<u32, BTreeSet<u64>>,
    pub(super) pages: usize,
}

/// Reopens the store and checks it against what the children reported.
/// `flushed[r]` and `appended[r]` are round `r`'s reported counts.
pub(super) fn verify(
    dir: &Path,
    key: &DataKey,
    flushed: &[u64],
    appended: &[u64],
    batches: &[u64],
    rng: &mut StdRng,
) -> Check {
    let mut check = Check::default();
    let store = match Store::open(db_path(dir), key) {
        Ok(store) => store,
        Err(e) => {
            check.corruption.push(format!("reopen failed: {e}"));
            return check;
        }
    };
    let history = store.history();

    // Every message reported as flushed, by id, with its exact contents.
    for (round, &n) in flushed.iter().enumerate() {
        let round = u32::try_from(round).unwrap();
        for counter in 0..n {
            let (want, _) = expected(round, counter);
            match history.get(&want.reference()) {
                Ok(Some(got)) if got == want => {}
                Ok(Some(got)) => check.losses.push(format!(
                    "round {round} message {counter}: contents differ \
                     (stored body {} bytes, lamport {}; expected {} bytes, lamport {})",
                    got.body.len(),
                    got.lamport,
                    want.body.len(),
                    want.lamport
                )),
                Ok(None) => check
                    .losses
                    .push(format!("round {round} message {counter}: missing")),
                Err(e) => check
                    .losses
                    .push(format!("round {round} message {counter}: unreadable: {e}")),
            }
        }
    }

    // Every conversation, page by page from the newest message: strictly
    // descending order, no duplicates, contents as written, nothing the
    // child never appended, and the conversation record matching its
    // messages (an append updates both in one transaction).
    let total_rounds = u32::try_from(flushed.len()).unwrap();
    let mut seen = HashSet::new();
    for k in 0..CONVERSATIONS {
        let conv = conv_id(k);
        let limit = rng.random_range(1..=300usize);
        let mut cursor: Option<Cursor> = None;
        let mut prev: Option<(u64, [u8; 32], [u8; 16])> = None;
        let (mut count, mut incoming, mut max_lamport, mut max_sent) = (0u64, 0u32, 0u64, 0u64);
        let max_pages = (CHILD_MAX_MESSAGES as usize * flushed.len()) / limit + 2;
        for page_no in 0.. {
            if page_no > max_pages {
                check
                    .corruption
                    .push(format!("conversation {k}: pagination does not end"));
                break;
            }
            let page = match history.page(&conv, cursor.as_ref(), limit) {
                Ok(page) => page,
                Err(e) => {
                    check
                        .corruption
                        .push(format!("conversation {k} page {page_no}: {e}"));
                    break;
                }
            };
            check.pages += 1;
            if page.messages.len() > limit || (page.messages.is_empty() && cursor.is_some()) {
                check.corruption.push(format!(
                    "conversation {k} page {page_no}: {} messages for limit {limit}",
                    page.messages.len()
                ));
            }
            for m in &page.messages {
                let sort_key = (m.lamport, m.sender, m.msg_id);
                if prev.is_some_and(|p| sort_key >= p) {
                    check.corruption.push(format!(
                        "conversation {k}: lamport {} out of order after {:?}",
                        m.lamport,
                        prev.map(|p| p.0)
                    ));
                }
                prev = Some(sort_key);
                if !seen.insert(m.msg_id) {
                    check
                        .corruption
                        .push(format!("conversation {k}: message {:?} twice", m.msg_id));
                }
                let Some((round, counter)) = decode_id(&m.msg_id) else {
                    check
                        .corruption
                        .push(format!("conversation {k}: foreign id {:?}", m.msg_id));
                    continue;
                };
                if round >= total_rounds {
                    check
                        .corruption
                        .push(format!("round {round} message {counter}: from the future"));
                    continue;
                }
                let (want, direction) = expected(round, counter);
                if *m != want {
                    check.corruption.push(format!(
                        "round {round} message {counter}: page holds other contents"
                    ));
                }
                if counter > appended[round as usize] {
                    check.corruption.push(format!(
                        "round {round} message {counter}: present, but the child \
                         reported only {} appended",
                        appended[round as usize]
                    ));
                }
                count += 1;
                if direction == Direction::Incoming {
                    incoming += 1;
                }
                max_lamport = max_lamport.max(m.lamport);
                max_sent = max_sent.max(m.sent_at);
                check.present.entry(round).or_default().insert(counter);
            }
            match page.next {
                Some(next) => cursor = Some(Cursor::parse(next.as_str()).unwrap()),
                None => break,
            }
        }
        match history.conversation(&conv) {
            Ok(None) if count == 0 => {}
            Ok(Some(c))
                if c.unread == incoming
                    && c.last_lamport == max_lamport
                    && c.last_message_at == max_sent => {}
            other => check.corruption.push(format!(
                "conversation {k}: record {other:?} does not match its {count} messages \
                 ({incoming} incoming, last lamport {max_lamport})"
            )),
        }
    }

    // Messages past what each round reported flushed: a lookup must agree
    // with the page walk (a torn write would leave them disagreeing). With
    // the reported-flushed ids above, this covers every message the walk
    // found.
    for (round, &n) in flushed.iter().enumerate() {
        let round = u32::try_from(round).unwrap();
        let present = check.present.get(&round);
        let top = present.and_then(|p| p.last().copied()).unwrap_or(0);
        let end = top.max(n).max(appended[round as usize]) + 2 * batches[round as usize] + 2;
        for counter in n..end {
            let in_pages = present.is_some_and(|p| p.contains(&counter));
            match history.get(&expected(round, counter).0.reference()) {
                Ok(Some(got)) if in_pages && got == expected(round, counter).0 => {}
                Ok(None) if !in_pages => {}
                other => check.corruption.push(format!(
                    "round {round} message {counter}: lookup says {:?}, pages say {}",
                    other.map(|o| o.is_some()),
                    if in_pages { "present" } else { "absent" }
                )),
            }
        }
    }
    check
}
