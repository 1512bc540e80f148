//! Read-only inspection for operators: pages of a stream and of the pending
//! list, group and consumer figures, which sender names are held live. Used
//! by `audit` and `senders`; never on a hot path.

use std::collections::{BTreeMap, HashMap};

use redis::Value;

use super::reader::IdAndValue;
use super::reply::{array, int, text};
use super::streams::StreamEntry;
use super::{Inspector, Operator};
use super::{ReadConnection, StoreError};

/// One row of the group's pending list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRow {
    /// The message id.
    pub id: String,
    /// The consumer that holds it.
    pub consumer: String,
    /// Milliseconds since it was last delivered.
    pub idle_ms: u64,
    /// Times it was delivered.
    pub deliveries: u64,
}

/// The consumer group's figures (XINFO GROUPS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupInfo {
    /// Whether the group exists.
    pub exists: bool,
    /// Id of the last entry delivered to the group.
    pub last_delivered_id: String,
    /// Entries in the pending list.
    pub pending: u64,
    /// Entries never delivered, when Redis knows.
    pub lag: Option<u64>,
}

/// One consumer of the group (XINFO CONSUMERS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    /// The sender name.
    pub name: String,
    /// Entries it holds.
    pub pending: u64,
    /// Milliseconds since it last interacted with the group.
    pub idle_ms: u64,
}

/// A stream's figures (XINFO STREAM).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamInfo {
    /// Entries in the stream now.
    pub length: u64,
    /// Entries ever added.
    pub entries_added: u64,
    /// The id of the newest entry ever added (`0-0` for none), deleted or
    /// trimmed since or not.
    pub last_id: String,
}

/// `XRANGE key (after + COUNT count`: a page of `key` after the entry
/// `after` (from the start when `None`).
fn range_after(key: &str, after: Option<&str>, count: usize) -> redis::Cmd {
    let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(key).arg(start).arg("+").arg("COUNT").arg(count);
    cmd
}

/// A flat `name, value, ...` reply as a map.
/// The command the group figures come from, named in errors.
const XINFO_GROUPS: &str = "XINFO GROUPS";

fn fields(command: &'static str, value: Value) -> Result<HashMap<String, Value>, StoreError> {
    let items = array(command, value)?;
    let mut map = HashMap::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        map.insert(text(command, name)?, value);
    }
    Ok(map)
}

fn count(
    command: &'static str,
    map: &mut HashMap<String, Value>,
    name: &str,
) -> Result<u64, StoreError> {
    int(command, map.remove(name).unwrap_or(Value::Int(0))).map(|n| n.max(0) as u64)
}

impl Inspector {
    /// Up to `count` entries of `key` after `after` (from the start when
    /// `None`), oldest first, read on `conn`: no value over the clipping
    /// limit is held (see [`StreamEntry::oversized`]).
    pub async fn range_page(
        &self,
        conn: &ReadConnection,
        key: &str,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        let cmd = range_after(key, after, count);
        conn.range_full(&cmd).await
    }

    /// Up to `count` entries of `key` before `before` (from the newest when
    /// `None`), newest first, read on `conn` like [`Inspector::range_page`].
    pub async fn range_page_rev(
        &self,
        conn: &ReadConnection,
        key: &str,
        before: Option<&str>,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        let end = before.map_or_else(|| "+".to_owned(), |id| format!("({id}"));
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(key).arg(end).arg("-").arg("COUNT").arg(count);
        conn.range_full(&cmd).await
    }

    /// The entry `id` of `key`, if it is there, read on `conn`.
    pub async fn range_one(
        &self,
        conn: &ReadConnection,
        key: &str,
        id: &str,
    ) -> Result<Option<StreamEntry>, StoreError> {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(key).arg(id).arg(id);
        Ok(conn.range_full(&cmd).await?.into_iter().next())
    }

    /// Redis's clock, in milliseconds since the Unix epoch.
    pub async fn server_time_ms(&self) -> Result<u64, StoreError> {
        let mut conn = self.store.conn().await?;
        let (seconds, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("TIME"))?;
        Ok(seconds * 1000 + micros / 1000)
    }

    /// The ids of up to `count` entries of `key` after `after` (from the
    /// start when `None`), read on `conn` (see [`Store::read_connection`](super::Store::read_connection)).
    /// For walks that need no fields: their bytes are skipped, not decoded,
    /// so a page of hostile entries costs no more than any other.
    pub async fn range_ids(
        &self,
        conn: &ReadConnection,
        key: &str,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<String>, StoreError> {
        let cmd = range_after(key, after, count);
        conn.range_ids(&cmd).await
    }

    /// The ids of up to `count` entries of `key` after `after` (from the
    /// start when `None`), each with the value of its field `name` (the last
    /// one; `None` when absent or too long to read), read on `conn` like
    /// [`Inspector::range_ids`]: the other fields are framed, never copied, and
    /// no value over 64 KiB is ever held, so a page of entries with 1 MB
    /// bodies costs what a page of small ones does.
    pub async fn range_values(
        &self,
        conn: &ReadConnection,
        key: &str,
        after: Option<&str>,
        count: usize,
        name: &'static str,
    ) -> Result<Vec<IdAndValue>, StoreError> {
        let cmd = range_after(key, after, count);
        conn.range_values(&cmd, name).await
    }

    /// Up to `count` rows of the group's pending list after `after`.
    pub async fn pending_page(
        &self,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<PendingRow>, StoreError> {
        const COMMAND: &str = "XPENDING";
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let mut conn = self.store.conn().await?;
        let reply: Value = redis::cmd(COMMAND)
            .arg(self.store.keys.messages())
            .arg(self.store.group())
            .arg(start)
            .arg("+")
            .arg(count)
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis(COMMAND))?;
        array(COMMAND, reply)?
            .into_iter()
            .map(|row| {
                let mut parts = array(COMMAND, row)?.into_iter();
                let mut next = || parts.next().unwrap_or(Value::Nil);
                Ok(PendingRow {
                    id: text(COMMAND, next())?,
                    consumer: text(COMMAND, next())?,
                    idle_ms: int(COMMAND, next())?.max(0) as u64,
                    deliveries: int(COMMAND, next())?.max(0) as u64,
                })
            })
            .collect()
    }

    /// Figures of stream `key`; zeros when it does not exist.
    pub async fn stream_info(&self, key: &str) -> Result<StreamInfo, StoreError> {
        const COMMAND: &str = "XINFO STREAM";
        let mut conn = self.store.conn().await?;
        let reply: Result<Value, _> = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(key)
            .query_async(&mut conn)
            .await;
        let reply = match reply {
            Err(err) if err.detail().is_some_and(|d| d.contains("no such key")) => {
                return Ok(StreamInfo {
                    last_id: "0-0".to_owned(),
                    ..StreamInfo::default()
                });
            }
            other => other.map_err(StoreError::redis(COMMAND))?,
        };
        let mut map = fields(COMMAND, reply)?;
        Ok(StreamInfo {
            length: count(COMMAND, &mut map, "length")?,
            entries_added: count(COMMAND, &mut map, "entries-added")?,
            last_id: text(
                COMMAND,
                map.remove("last-generated-id").unwrap_or(Value::Nil),
            )?,
        })
    }

    /// The groups on this partition's stream as `XINFO GROUPS` gives them,
    /// each a map of its fields (none when the stream is missing).
    async fn groups(&self) -> Result<Vec<HashMap<String, Value>>, StoreError> {
        let mut conn = self.store.conn().await?;
        let reply: Value = match redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(self.store.keys.messages())
            .query_async(&mut conn)
            .await
        {
            // No stream: no group either.
            Err(err) if err.detail().is_some_and(|d| d.contains("no such key")) => {
                return Ok(Vec::new());
            }
            other => other.map_err(StoreError::redis(XINFO_GROUPS))?,
        };
        array(XINFO_GROUPS, reply)?
            .into_iter()
            .map(|group| fields(XINFO_GROUPS, group))
            .collect()
    }

    /// This queue's group figures (`exists` false when the group or the
    /// stream is missing).
    pub async fn group_info(&self) -> Result<GroupInfo, StoreError> {
        for mut map in self.groups().await? {
            if text(XINFO_GROUPS, map.remove("name").unwrap_or(Value::Nil))? != self.store.group() {
                continue;
            }
            return Ok(GroupInfo {
                exists: true,
                last_delivered_id: text(
                    XINFO_GROUPS,
                    map.remove("last-delivered-id").unwrap_or(Value::Nil),
                )?,
                pending: count(XINFO_GROUPS, &mut map, "pending")?,
                lag: match map.remove("lag") {
                    Some(Value::Int(lag)) => u64::try_from(lag).ok(),
                    _ => None,
                },
            });
        }
        Ok(GroupInfo::default())
    }

    /// Walks the dead stream on the read connection `ids`, `page` entries
    /// at a time: its length, and its entries counted by `dead_reason`. Only
    /// the id and that field of each entry are decoded, and the connection
    /// never holds a long value, so dead entries with 1 MB bodies cost no
    /// more than others.
    pub async fn dead_reasons(
        &self,
        ids: &ReadConnection,
        page: usize,
    ) -> Result<(u64, BTreeMap<String, u64>), StoreError> {
        let mut dead_by_reason = BTreeMap::new();
        let mut dead_length = 0u64;
        let mut after: Option<String> = None;
        loop {
            let entries = self
                .range_values(
                    ids,
                    &self.store.keys.dead(),
                    after.as_deref(),
                    page,
                    "dead_reason",
                )
                .await?;
            let Some((last, _)) = entries.last() else {
                break;
            };
            after = Some(last.clone());
            let full_page = entries.len() == page;
            dead_length += entries.len() as u64;
            for (_, reason) in entries {
                let reason = reason.map_or_else(
                    || "unknown".to_owned(),
                    |reason| String::from_utf8_lossy(&reason).into_owned(),
                );
                *dead_by_reason.entry(reason).or_insert(0) += 1;
            }
            if !full_page {
                break;
            }
        }
        Ok((dead_length, dead_by_reason))
    }

    /// The names of the consumer groups on this partition's stream (none
    /// when the stream is missing).
    pub async fn group_names(&self) -> Result<Vec<String>, StoreError> {
        self.groups()
            .await?
            .into_iter()
            .map(|mut map| text(XINFO_GROUPS, map.remove("name").unwrap_or(Value::Nil)))
            .collect()
    }

    /// The group's consumers; none when the stream or the group is missing
    /// (what that means is for [`Store::diagnose`](super::Store::diagnose) to say).
    pub async fn consumers(&self) -> Result<Vec<ConsumerInfo>, StoreError> {
        const COMMAND: &str = "XINFO CONSUMERS";
        let mut conn = self.store.conn().await?;
        let reply: Value = match redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(self.store.keys.messages())
            .arg(self.store.group())
            .query_async(&mut conn)
            .await
        {
            Err(err)
                if err.code() == Some("NOGROUP")
                    || err.detail().is_some_and(|d| d.contains("no such key")) =>
            {
                return Ok(Vec::new());
            }
            other => other.map_err(StoreError::redis(COMMAND))?,
        };
        array(COMMAND, reply)?
            .into_iter()
            .map(|consumer| {
                let mut map = fields(COMMAND, consumer)?;
                Ok(ConsumerInfo {
                    name: text(COMMAND, map.remove("name").unwrap_or(Value::Nil))?,
                    pending: count(COMMAND, &mut map, "pending")?,
                    idle_ms: count(COMMAND, &mut map, "idle")?,
                })
            })
            .collect()
    }

    /// Each sender's counters hash (integer fields only), in the order of `names`.
    pub async fn sender_stats(
        &self,
        names: &[String],
    ) -> Result<Vec<HashMap<String, String>>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for name in names {
            pipe.hgetall(self.store.keys.sender_stats(name));
        }
        let mut conn = self.store.conn().await?;
        pipe.query_async(&mut conn)
            .await
            .map_err(StoreError::redis("HGETALL"))
    }

    /// One section of INFO, as text.
    pub async fn info(&self, section: &str) -> Result<String, StoreError> {
        let mut conn = self.store.conn().await?;
        redis::cmd("INFO")
            .arg(section)
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("INFO"))
    }

    /// For each name, whether a live process holds it (its liveness lease exists).
    pub async fn live_names(&self, names: &[String]) -> Result<Vec<bool>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for name in names {
            pipe.exists(self.store.keys.sender_lease(name));
        }
        let mut conn = self.store.conn().await?;
        pipe.query_async(&mut conn)
            .await
            .map_err(StoreError::redis("EXISTS"))
    }
}

impl Operator {
    /// The type of `key` (`none` when it does not exist).
    pub async fn key_type(&self, key: &str) -> Result<String, StoreError> {
        let mut conn = self.store.conn().await?;
        redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("TYPE"))
    }

    /// Every field of the hash `key`, values as lossy text.
    pub async fn hash(&self, key: &str) -> Result<HashMap<String, String>, StoreError> {
        let mut conn = self.store.conn().await?;
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis_on("HGETALL", key))?;
        Ok(pairs
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect())
    }

    /// How many entries of the stream `key` come after `id`, counted by
    /// walking their ids a page at a time (memory stays flat).
    pub async fn count_after(&self, key: &str, id: &str) -> Result<u64, StoreError> {
        const PAGE: usize = 10_000;
        let conn = self
            .store
            .read_connection(std::time::Duration::ZERO)
            .await?;
        let mut after = id.to_owned();
        let mut count = 0;
        loop {
            let ids = self
                .store
                .inspector()
                .range_ids(&conn, key, Some(&after), PAGE)
                .await?;
            count += ids.len() as u64;
            match ids.last() {
                Some(last) if ids.len() == PAGE => after = last.clone(),
                _ => return Ok(count),
            }
        }
    }

    /// Runs the commands of one of an operator's repairs in one `MULTI`
    /// transaction (never on a hot path). A command that fails inside it is
    /// an error.
    pub async fn run_atomically(&self, cmds: &[redis::Cmd]) -> Result<(), StoreError> {
        if cmds.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for cmd in cmds {
            pipe.add_command(cmd.clone()).ignore();
        }
        let mut conn = self.store.conn().await?;
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(StoreError::redis("repair"))
    }

    /// Every key of this queue (its prefix and partition), by SCAN. For
    /// `repair`; never on a hot path.
    pub async fn all_keys(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.store.conn().await?;
        scan(&mut conn, &self.store.keys.all_pattern()).await
    }

    /// Deletes every key of this queue (its prefix and partition), by SCAN.
    /// For benchmarks and tests; never on a hot path.
    pub async fn delete_all_keys(&self) -> Result<(), StoreError> {
        let mut conn = self.store.conn().await?;
        let keys = scan(&mut conn, &self.store.keys.all_pattern()).await?;
        for chunk in keys.chunks(1_000) {
            redis::cmd("UNLINK")
                .arg(chunk)
                .query_async::<()>(&mut conn)
                .await
                .map_err(StoreError::redis("UNLINK"))?;
        }
        Ok(())
    }
}

/// Every key of the server behind `conn` matching `pattern`, by SCAN, sorted
/// and each once (SCAN may return a key twice).
pub(super) async fn scan(
    conn: &mut impl redis::aio::ConnectionLike,
    pattern: &str,
) -> Result<Vec<String>, StoreError> {
    let mut cursor: u64 = 0;
    let mut all = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1_000)
            .query_async(conn)
            .await
            .map_err(StoreError::redis("SCAN"))?;
        all.extend(keys);
        if next == 0 {
            all.sort();
            all.dedup();
            return Ok(all);
        }
        cursor = next;
    }
}
