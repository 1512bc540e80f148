//! Producer runs: each run has a record (count, seed, batch size, the
//! partitions it routes over and how, state), a liveness lease held by the
//! producer writing it, and the set of batches it has written. A run whose
//! lease ran out while it was not finished died; `produce --resume` finishes
//! it, writing only the batches missing, and the monitor stops waiting for
//! it.
//!
//! All of that lives in partition 0, except the marks of a batch's parts on
//! other partitions: each partition's part of a batch is marked in that
//! partition's batches hash, in the transaction that writes it. Partition
//! 0's mark is written last, once the other parts have landed, so partition
//! 0's batches hash alone says which batches are whole.

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;

use super::functions::NameHold;
use super::reply::{array, int, text};
use super::{Inspector, Producer};
use super::{Store, StoreError};
use crate::routing::Routing;

/// How long a finished run's record stays listed by `runs`.
pub const RUN_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a run is to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunPlan {
    /// Messages in all.
    pub count: u64,
    /// Generator seed (recorded, so a resumed run writes the same messages).
    pub seed: u64,
    /// Messages per batch.
    pub batch: u64,
}

impl RunPlan {
    /// Batches in all.
    pub fn batches(&self) -> u64 {
        self.count.div_ceil(self.batch.max(1))
    }
}

/// Where a run's messages go: the partitions it routes over (the queue's
/// count when it started, kept for its whole life) and how it picks one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRoute {
    /// The partitions the run routes over, from 0.
    pub partitions: u32,
    /// How each message's partition is picked.
    pub routing: Routing,
}

impl Default for RunRoute {
    /// One partition, by recipient: what a run recorded before runs had
    /// routes did.
    fn default() -> Self {
        Self {
            partitions: 1,
            routing: Routing::Recipient,
        }
    }
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// A live producer writes it.
    Running,
    /// Every batch is written.
    Finished,
    /// Interrupted by a signal; `produce --resume` finishes it.
    Stopped,
    /// Its producer is gone without finishing (its lease ran out).
    Died,
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Running => "running",
            Self::Finished => "finished",
            Self::Stopped => "stopped",
            Self::Died => "died",
        })
    }
}

/// One run as Redis records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunInfo {
    /// The run id.
    pub id: String,
    /// Where it stands.
    pub state: RunState,
    /// What it generates.
    #[serde(skip)]
    pub plan: RunPlan,
    /// Messages in all.
    pub count: u64,
    /// Batches written so far.
    pub batches_written: u64,
    /// Batches in all.
    pub batches: u64,
    /// When it started (ms since the Unix epoch).
    pub started_ms: u64,
}

/// How a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Every batch was written.
    Finished,
    /// A signal stopped it early.
    Stopped,
}

impl Store {
    /// The keys a run's start and resume touch.
    fn run_keys(&self, run_id: &str) -> [String; 5] {
        [
            self.keys.queue(),
            self.keys.runs(),
            self.keys.open_runs(),
            self.keys.run(run_id),
            self.keys.run_lease(run_id),
        ]
    }

    /// The record, written batches and liveness of each run in `ids`; runs
    /// whose record is gone (expired) are left out.
    async fn run_infos(&self, ids: Vec<String>) -> Result<Vec<RunInfo>, StoreError> {
        const NAME: &str = "HGETALL (runs)";
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(self.keys.run(id))
                .hlen(self.keys.run_batches(id))
                .exists(self.keys.run_lease(id));
        }
        let mut conn = self.conn().await?;
        let replies: Vec<Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis(NAME))?;
        let mut runs = Vec::with_capacity(ids.len());
        for (id, reply) in ids.into_iter().zip(replies.chunks(3)) {
            let [record, written, live] = reply else {
                return Err(super::reply::bad(NAME, "a reply is missing"));
            };
            let record = flat_map(NAME, record.clone())?;
            if record.is_empty() {
                continue;
            }
            let plan = plan_of(NAME, &record)?;
            let live = int(NAME, live.clone())? == 1;
            let state = match record.get("state").map(String::as_str) {
                Some("finished") => RunState::Finished,
                Some("stopped") if !live => RunState::Stopped,
                _ if live => RunState::Running,
                _ => RunState::Died,
            };
            runs.push(RunInfo {
                id,
                state,
                plan,
                count: plan.count,
                batches_written: int(NAME, written.clone())?.max(0) as u64,
                batches: plan.batches(),
                started_ms: number(&record, "started_ms"),
            });
        }
        Ok(runs)
    }
}

/// A flat `field, value, ...` reply as a map.
fn flat_map(command: &'static str, reply: Value) -> Result<HashMap<String, String>, StoreError> {
    let items = array(command, reply)?;
    let mut map = HashMap::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        map.insert(text(command, name)?, text(command, value)?);
    }
    Ok(map)
}

fn number(record: &HashMap<String, String>, field: &str) -> u64 {
    record
        .get(field)
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

fn plan_of(command: &'static str, record: &HashMap<String, String>) -> Result<RunPlan, StoreError> {
    let field = |name: &str| {
        record
            .get(name)
            .and_then(|value| value.parse::<u64>().ok())
            .ok_or_else(|| {
                StoreError::Damaged(format!(
                    "{command}: a producer run's record has no valid '{name}'"
                ))
            })
    };
    Ok(RunPlan {
        count: field("count")?,
        seed: field("seed")?,
        batch: field("batch")?.max(1),
    })
}

/// The route in a run's record; a run recorded before routes were kept
/// went to its queue's one partition.
fn route_of(
    command: &'static str,
    record: &HashMap<String, String>,
) -> Result<RunRoute, StoreError> {
    let damaged = |name: &str, value: &str| {
        StoreError::Damaged(format!(
            "{command}: a producer run's record has an invalid '{name}': {value:?}"
        ))
    };
    let mut route = RunRoute::default();
    if let Some(value) = record.get("partitions") {
        route.partitions = value
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| damaged("partitions", value))?;
    }
    if let Some(value) = record.get("routing") {
        route.routing = Routing::from_record(value).ok_or_else(|| damaged("routing", value))?;
    }
    Ok(route)
}

impl Producer {
    /// Records a new run, with its route, and takes its lease
    /// (`sms_run_start`). [`StoreError::Refused`] when the id is taken.
    pub async fn start_run(
        &self,
        run_id: &str,
        plan: &RunPlan,
        route: &RunRoute,
        token: &str,
        lease: Duration,
    ) -> Result<(), StoreError> {
        const NAME: &str = "sms_run_start";
        let keys = self.store.run_keys(run_id);
        let args = [
            self.store.epoch.to_string(),
            run_id.to_owned(),
            token.to_owned(),
            lease.as_millis().to_string(),
            plan.count.to_string(),
            plan.seed.to_string(),
            plan.batch.to_string(),
            plan.batches().to_string(),
            RUN_KEEP.as_millis().to_string(),
            route.partitions.to_string(),
            route.routing.to_record(),
        ];
        self.store
            .fcall(NAME, &keys, args.map(String::into_bytes).to_vec())
            .await?;
        Ok(())
    }

    /// Takes over a run whose producer is gone (`sms_run_resume`) and
    /// returns its plan and route. [`StoreError::Refused`] when there is no
    /// such run, it has finished, or its producer is alive.
    pub async fn resume_run(
        &self,
        run_id: &str,
        token: &str,
        lease: Duration,
    ) -> Result<(RunPlan, RunRoute), StoreError> {
        const NAME: &str = "sms_run_resume";
        let keys = self.store.run_keys(run_id);
        let args = [
            self.store.epoch.to_string(),
            run_id.to_owned(),
            token.to_owned(),
            lease.as_millis().to_string(),
        ];
        let reply = self
            .store
            .fcall(NAME, &keys, args.map(String::into_bytes).to_vec())
            .await?;
        let record = flat_map(NAME, reply)?;
        Ok((plan_of(NAME, &record)?, route_of(NAME, &record)?))
    }

    /// Renews a run's lease (`sms_hold_name`); `HeldByOther` when another
    /// producer took the run over.
    pub async fn hold_run(
        &self,
        run_id: &str,
        token: &str,
        lease: Duration,
    ) -> Result<NameHold, StoreError> {
        self.store
            .hold_lease(self.store.keys.run_lease(run_id), token, lease)
            .await
    }

    /// Gives a run's lease back (`sms_release_name`), if this process
    /// (`token`) holds it: the run then reads as died at once.
    pub async fn release_run(&self, run_id: &str, token: &str) -> Result<(), StoreError> {
        self.store
            .release_lease(self.store.keys.run_lease(run_id), token)
            .await
    }

    /// Ends a run (`sms_run_end`). For a finished run, checks first that all
    /// `batches` are recorded written; returns the numbers of those missing
    /// (lost with the queue's state), in which case nothing is recorded.
    pub async fn end_run(
        &self,
        run_id: &str,
        token: &str,
        end: RunEnd,
        batches: u64,
    ) -> Result<Vec<u64>, StoreError> {
        const NAME: &str = "sms_run_end";
        let keys = [
            self.store.keys.queue(),
            self.store.keys.open_runs(),
            self.store.keys.run(run_id),
            self.store.keys.run_lease(run_id),
            self.store.keys.run_batches(run_id),
        ];
        let (state, expected) = match end {
            RunEnd::Finished => ("finished", batches),
            RunEnd::Stopped => ("stopped", 0),
        };
        let args = [
            self.store.epoch.to_string(),
            run_id.to_owned(),
            token.to_owned(),
            state.to_owned(),
            expected.to_string(),
            RUN_KEEP.as_millis().to_string(),
        ];
        let reply = self
            .store
            .fcall(NAME, &keys, args.map(String::into_bytes).to_vec())
            .await?;
        let mut items = array(NAME, reply)?.into_iter();
        let recorded = int(NAME, items.next().unwrap_or(Value::Nil))?;
        if recorded == 1 {
            return Ok(Vec::new());
        }
        items
            .map(|seq| int(NAME, seq).map(|n| n.max(0) as u64))
            .collect()
    }

    /// The batches of a run recorded written on this handle's partition
    /// (on partition 0: the whole batches; on another, their parts there),
    /// each with the messages it wrote there.
    pub async fn written_batches(&self, run_id: &str) -> Result<HashMap<u64, u64>, StoreError> {
        let mut conn = self.store.conn().await?;
        let marks: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.store.keys.run_batches(run_id))
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("HGETALL (run batches)"))?;
        Ok(marks
            .iter()
            .filter_map(|(seq, count)| Some((seq.parse().ok()?, count.parse().unwrap_or(0))))
            .collect())
    }

    /// How many batches of a run are marked on this handle's partition.
    pub async fn written_batch_count(&self, run_id: &str) -> Result<u64, StoreError> {
        let mut conn = self.store.conn().await?;
        redis::cmd("HLEN")
            .arg(self.store.keys.run_batches(run_id))
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("HLEN (run batches)"))
    }

    /// Lets the marks of a finished run's parts on this handle's partition
    /// (not partition 0, whose marks `sms_run_end` expires) go after
    /// [`RUN_KEEP`], as its record does.
    pub async fn expire_batches(&self, run_id: &str) -> Result<(), StoreError> {
        let mut conn = self.store.conn().await?;
        redis::cmd("PEXPIRE")
            .arg(self.store.keys.run_batches(run_id))
            .arg(RUN_KEEP.as_millis() as u64)
            .query_async::<()>(&mut conn)
            .await
            .map_err(StoreError::redis("PEXPIRE (run batches)"))
    }
}

impl Inspector {
    /// The runs not finished yet, with their state, and whether any run is
    /// recorded at all (open, or finished within [`RUN_KEEP`]). A run is
    /// added to both at once, so counting the listed runs *before* reading
    /// the open ones never shows a run starting in between as one that had
    /// ended. (A `MULTI` would do too, but Redis refuses to queue commands at
    /// `maxmemory`, and this must work there.) Read only.
    pub async fn open_runs(&self) -> Result<(Vec<RunInfo>, bool), StoreError> {
        let mut conn = self.store.conn().await?;
        let (listed, ids): (u64, Vec<String>) = redis::pipe()
            .zcard(self.store.keys.runs())
            .smembers(self.store.keys.open_runs())
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("SMEMBERS (open runs)"))?;
        let any = listed > 0 || !ids.is_empty();
        Ok((self.store.run_infos(ids).await?, any))
    }

    /// Every run listed: the open ones and those finished within
    /// [`RUN_KEEP`], oldest first (read only).
    pub async fn all_runs(&self) -> Result<Vec<RunInfo>, StoreError> {
        let mut conn = self.store.conn().await?;
        let (mut ids, open): (Vec<String>, Vec<String>) = redis::pipe()
            .cmd("ZRANGE")
            .arg(self.store.keys.runs())
            .arg(0)
            .arg(-1)
            .cmd("SMEMBERS")
            .arg(self.store.keys.open_runs())
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("ZRANGE (runs)"))?;
        for id in open {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let mut runs = self.store.run_infos(ids).await?;
        runs.sort_by_key(|run| run.started_ms);
        Ok(runs)
    }
}
