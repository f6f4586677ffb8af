//! The reference engine: SQLite through rusqlite, WAL, plaintext.

use rusqlite::{Connection, OptionalExtension, params};

use super::*;

/// The SQLite reference: what a messenger keeps, in plaintext.
pub(super) struct SqliteEngine {
    pub(super) conn: Connection,
}

pub(super) type SqlCursor = (i64, [u8; 32], [u8; 16]);

pub(super) const SQL_SCHEMA: &str = "
CREATE TABLE messages (
    conv_id    BLOB NOT NULL,
    lamport    INTEGER NOT NULL,
    sender     BLOB NOT NULL,
    msg_id     BLOB NOT NULL,
    body       BLOB NOT NULL,
    state      INTEGER NOT NULL,
    sent_at    INTEGER NOT NULL,
    expires_at INTEGER
);
-- Deduplication by the same key as the store's (conversation, Lamport
-- clock, sender, id), which is also the index pages are read from.
CREATE UNIQUE INDEX messages_by_conv ON messages (conv_id, lamport, sender, msg_id);
CREATE TABLE conversations (
    conv_id         BLOB PRIMARY KEY,
    title           TEXT NOT NULL,
    last_message_at INTEGER NOT NULL,
    last_lamport    INTEGER NOT NULL,
    unread          INTEGER NOT NULL,
    retention       INTEGER
);
CREATE INDEX conversations_by_activity
    ON conversations (last_message_at DESC, last_lamport DESC, conv_id);
";
pub(super) const SQL_RETENTION: &str = "SELECT retention FROM conversations WHERE conv_id = ?1";
pub(super) const SQL_INSERT: &str = "INSERT OR IGNORE INTO messages \
    (conv_id, lamport, sender, msg_id, body, state, sent_at, expires_at) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
pub(super) const SQL_CONV: &str = "INSERT INTO conversations \
    (conv_id, title, last_message_at, last_lamport, unread, retention) \
    VALUES (?1, '', ?2, ?3, ?4, NULL) \
    ON CONFLICT (conv_id) DO UPDATE SET \
    last_message_at = max(last_message_at, excluded.last_message_at), \
    last_lamport = max(last_lamport, excluded.last_lamport), \
    unread = unread + excluded.unread";
pub(super) const SQL_PAGE_COLS: &str =
    "SELECT msg_id, conv_id, sender, lamport, sent_at, body, state, expires_at FROM messages";
pub(super) const SQL_PAGE_NEWEST: &str = "WHERE conv_id = ?1 \
    ORDER BY lamport DESC, sender DESC, msg_id DESC LIMIT 51";
pub(super) const SQL_PAGE_BEFORE: &str = "WHERE conv_id = ?1 AND (lamport, sender, msg_id) < (?2, ?3, ?4) \
    ORDER BY lamport DESC, sender DESC, msg_id DESC LIMIT 51";
/// The conversation list with each conversation's newest message, in one
/// query as a messenger would write it.
pub(super) const SQL_SUMMARIES: &str = "SELECT c.conv_id, c.title, c.last_message_at, c.last_lamport, \
    c.unread, c.retention, \
    m.msg_id, m.conv_id, m.sender, m.lamport, m.sent_at, m.body, m.state, m.expires_at \
    FROM conversations c LEFT JOIN messages m ON m.rowid = ( \
        SELECT rowid FROM messages WHERE conv_id = c.conv_id \
        ORDER BY lamport DESC, sender DESC, msg_id DESC LIMIT 1) \
    ORDER BY c.last_message_at DESC, c.last_lamport DESC, c.conv_id";
pub(super) const SQL_LIST: &str = "SELECT conv_id, title, last_message_at, last_lamport, unread, retention \
    FROM conversations ORDER BY last_message_at DESC, last_lamport DESC, conv_id";

pub(super) fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap()
}

pub(super) fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap()
}

impl SqliteEngine {
    pub(super) fn open(path: &Path) -> Self {
        let conn = Connection::open(path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.execute_batch("PRAGMA synchronous = NORMAL;").unwrap();
        conn.execute_batch(SQL_SCHEMA).unwrap();
        Self { conn }
    }

    /// The same work as the store's append: read the conversation's
    /// retention, insert unless the id exists, update the conversation.
    fn insert(conn: &Connection, msgs: &[StoredMessage], dir: Direction) {
        let mut seen: Vec<[u8; 32]> = Vec::new();
        let mut retention = conn.prepare_cached(SQL_RETENTION).unwrap();
        let mut ins = conn.prepare_cached(SQL_INSERT).unwrap();
        let mut conv = conn.prepare_cached(SQL_CONV).unwrap();
        let unread = i64::from(dir == Direction::Incoming);
        for m in msgs {
            if !seen.contains(&m.conv_id) {
                let r: Option<Option<i64>> = retention
                    .query_row([m.conv_id], |r| r.get(0))
                    .optional()
                    .unwrap();
                black_box(r);
                seen.push(m.conv_id);
            }
            let n = ins
                .execute(params![
                    m.conv_id,
                    i(m.lamport),
                    m.sender,
                    m.msg_id,
                    m.body,
                    m.state as i64,
                    i(m.sent_at),
                    m.expires_at.map(i),
                ])
                .unwrap();
            if n == 1 {
                conv.execute(params![m.conv_id, i(m.sent_at), i(m.lamport), unread])
                    .unwrap();
            }
        }
    }

    fn row_to_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
        Self::message_at(r, 0)
    }

    /// A message from the eight columns starting at `at`.
    fn message_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<StoredMessage> {
        Ok(StoredMessage {
            msg_id: r.get(at)?,
            conv_id: r.get(at + 1)?,
            sender: r.get(at + 2)?,
            lamport: u(r.get(at + 3)?),
            sent_at: u(r.get(at + 4)?),
            body: r.get(at + 5)?,
            state: match r.get::<_, i64>(at + 6)? {
                0 => DeliveryState::Pending,
                1 => DeliveryState::Sent,
                2 => DeliveryState::StoredAtRelay,
                3 => DeliveryState::Delivered,
                _ => DeliveryState::Read,
            },
            expires_at: r.get::<_, Option<i64>>(at + 7)?.map(u),
        })
    }

    fn conversation(r: &rusqlite::Row<'_>) -> rusqlite::Result<Conversation> {
        Ok(Conversation {
            id: r.get(0)?,
            title: r.get(1)?,
            last_message_at: u(r.get(2)?),
            last_lamport: u(r.get(3)?),
            unread: u32::try_from(r.get::<_, i64>(4)?).unwrap(),
            retention: r.get::<_, Option<i64>>(5)?.map(u),
        })
    }
}

impl Engine for SqliteEngine {
    type Cursor = SqlCursor;

    fn append_batch(&mut self, msgs: &[StoredMessage], dir: Direction) {
        let tx = self.conn.transaction().unwrap();
        Self::insert(&tx, msgs, dir);
        tx.commit().unwrap();
    }

    fn append_one(&mut self, msg: &StoredMessage, dir: Direction) {
        // Message and conversation update in one transaction, one commit.
        self.append_batch(std::slice::from_ref(msg), dir);
    }

    fn set_durable(&mut self, durable: bool) {
        let mode = if durable { "FULL" } else { "NORMAL" };
        self.conn
            .execute_batch(&format!("PRAGMA synchronous = {mode};"))
            .unwrap();
    }

    fn durable_point(&mut self) {}

    fn page(
        &mut self,
        conv: &[u8; 32],
        before: Option<&SqlCursor>,
    ) -> (Vec<StoredMessage>, Option<SqlCursor>) {
        let mut rows: Vec<StoredMessage> = match before {
            None => {
                let mut st = self
                    .conn
                    .prepare_cached(&format!("{SQL_PAGE_COLS} {SQL_PAGE_NEWEST}"))
                    .unwrap();
                st.query_map(params![conv], Self::row_to_message)
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap()
            }
            Some((lamport, sender, msg_id)) => {
                let mut st = self
                    .conn
                    .prepare_cached(&format!("{SQL_PAGE_COLS} {SQL_PAGE_BEFORE}"))
                    .unwrap();
                st.query_map(params![conv, lamport, sender, msg_id], Self::row_to_message)
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap()
            }
        };
        let more = rows.len() > PAGE;
        rows.truncate(PAGE);
        let next = if more {
            rows.last().map(|m| (i(m.lamport), m.sender, m.msg_id))
        } else {
            None
        };
        (rows, next)
    }

    fn list(&mut self) -> Vec<Conversation> {
        let mut st = self.conn.prepare_cached(SQL_LIST).unwrap();
        st.query_map([], Self::conversation)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn summaries(&mut self) -> Vec<(Conversation, Option<StoredMessage>)> {
        let mut st = self.conn.prepare_cached(SQL_SUMMARIES).unwrap();
        st.query_map([], |r| {
            let last = match r.get::<_, Option<Vec<u8>>>(6)? {
                Some(_) => Some(Self::message_at(r, 6)?),
                None => None,
            };
            Ok((Self::conversation(r)?, last))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    fn extra(&mut self) -> Value {
        let plan = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> String {
            let mut st = self
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            st.query_map(params, |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
                .join("; ")
        };
        let c = [0u8; 32];
        let page = plan(
            &format!("{SQL_PAGE_COLS} {SQL_PAGE_BEFORE}"),
            &[&c, &0i64, &c, &[0u8; 16]],
        );
        let list = plan(SQL_LIST, &[]);
        let summaries = plan(SQL_SUMMARIES, &[]);
        let version: String = self
            .conn
            .query_row("SELECT sqlite_version()", [], |r| r.get(0))
            .unwrap();
        json!({
            "sqlite_version": version,
            "plan_page": page,
            "plan_list": list,
            "plan_summaries": summaries,
        })
    }
}
