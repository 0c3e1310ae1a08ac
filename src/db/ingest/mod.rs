//! Webhook ingestion with grouped commits.
//!
//! Each instance runs a few writer tasks. A writer takes every delivery waiting at that moment
//! (up to `ingest_batch_max`) and applies them in **one** transaction — insert the delivery
//! rows, lock and load their projects, apply each transition in memory, write the changed rows
//! and the outbox jobs, commit — and only then answers each
//! request. An idle gateway answers a lone webhook with a batch of one; under load, batches
//! form on their own from the requests that arrive while the previous batch commits. Every
//! delivery keeps the guarantees of a transaction of its own: its delivery row, state change
//! and outbox rows commit together or not at all, and a rejected delivery leaves no row.
//!
//! The writers run on a thread and runtime of their own ([`Ingestor::start`]). Each backend
//! has statements written for it: Postgres runs a few of one shape each, rows bound as arrays,
//! sent without waiting for each answer on connections of the writers' own ([`postgres`]);
//! SQLite runs cached statements a row at a time on a connection of its own driven directly
//! ([`sqlite`]), where the per-statement and per-row hops of sqlx's SQLite worker thread cost
//! several times what SQLite itself spends.
//! The decisions are shared: both claim the deliveries, read [`scenes_wanted`], run
//! [`apply_transitions`] and write what changed.

/// The scene columns both backends' ingestion reads, in the order their decoders expect, for
/// a table aliased `s`.
macro_rules! scene_columns {
    () => {
        "s.id, s.project_id, s.position, s.prompt, s.status, s.video_task_id, s.video_url, \
         s.first_frame_url, s.last_frame_url, s.attempts, s.extract_attempts, s.last_error, \
         s.verified_at, s.status_changed_at, s.created_at, s.updated_at"
    };
}

mod postgres;
mod sqlite;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use entity::outbox_job;
use futures::{FutureExt, future::Shared};
pub use postgres::{PgWriter, STATEMENTS as POSTGRES_STATEMENTS, Session, WriterSessions};
use sea_orm::{DatabaseConnection, DbErr, RuntimeErr};
pub use sqlite::SqliteWriter;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::pipeline::{IngestOutcome, Observation, PipelineError, Work};
use crate::{
    config::Config,
    domain::{Limits, ScenesRead, apply_callback, scenes_read, webhook::Callback},
    outbox::jobs::{JobContext, new_job_rows},
};

/// One verified webhook delivery to apply.
#[derive(Debug)]
pub struct Submission {
    /// The endpoint (`video-complete`, …); with `key`, the delivery's identity.
    pub kind: &'static str,
    pub key: String,
    pub callback: Callback,
    pub jobs: JobContext,
    pub admission: Admission,
}

/// Whether the rate limiter lets a delivery in. A request submits its delivery while its
/// limiter call is still on the way, so that the call's round trip overlaps the batch's first
/// round trip to the database instead of preceding it; the writer waits for the decision
/// before it applies the delivery, and a refused one is taken back like a rejected one: no
/// row, no state change.
#[derive(Debug, Clone)]
pub struct Admission(Option<Shared<oneshot::Receiver<bool>>>);

/// The limiter's side of a pending [`Admission`]. Dropped without a decision (the request was
/// dropped before its limiter call finished), it refuses.
#[derive(Debug)]
pub struct AdmissionDecision(oneshot::Sender<bool>);

impl AdmissionDecision {
    pub fn decide(self, admitted: bool) {
        // The delivery may already be gone (its request failed before submitting it).
        let _ = self.0.send(admitted);
    }
}

impl Admission {
    /// Admitted already (tests, benchmarks, callers with no limiter).
    pub fn granted() -> Self {
        Self(None)
    }

    /// Undecided until the returned decision is made.
    pub fn pending() -> (AdmissionDecision, Self) {
        let (decision, admission) = oneshot::channel();
        (AdmissionDecision(decision), Self(Some(admission.shared())))
    }

    /// Waits for the decision.
    pub async fn admitted(&self) -> bool {
        match &self.0 {
            None => true,
            Some(decision) => decision.clone().await == Ok(true),
        }
    }
}

type Reply = Result<IngestOutcome, PipelineError>;

/// Deliveries to apply in one transaction; each (kind, key) at most once, so that every
/// delivery row inserted belongs to exactly one submission.
#[derive(Debug, Default)]
pub struct Batch {
    items: Vec<Submission>,
    keys: HashSet<(&'static str, String)>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Each submission's admission, in order, once decided ([`Admission`]).
    async fn admitted(&self) -> Vec<bool> {
        let mut admitted = Vec::with_capacity(self.items.len());
        for submission in &self.items {
            admitted.push(submission.admission.admitted().await);
        }
        admitted
    }

    /// Adds a submission, or hands it back if the same delivery is already in the batch (it
    /// then belongs in the next batch, where it finds this one's row).
    pub fn push(&mut self, submission: Submission) -> Result<(), Box<Submission>> {
        if self.keys.insert((submission.kind, submission.key.clone())) {
            self.items.push(submission);
            Ok(())
        } else {
            Err(Box::new(submission))
        }
    }
}

/// Where a batch is written: on Postgres, connections of the writers' own
/// ([`postgres::PgWriter`]); on SQLite, a connection of its own ([`sqlite::SqliteWriter`]).
#[derive(Clone)]
pub enum IngestDb {
    Postgres(PgWriter),
    Sqlite(Arc<SqliteWriter>),
}

impl IngestDb {
    /// Opens ingestion's connections to the database `db` is connected to: as many as there
    /// are writers, so that the API and the outbox never make a webhook wait for one.
    pub async fn open(db: &DatabaseConnection, config: &Config) -> Result<Self, DbErr> {
        if super::is_postgres(db) {
            let timeout = std::time::Duration::from_millis(config.database.acquire_timeout_ms);
            let writer = PgWriter::open(&config.database_url, writers(db, config), timeout).await?;
            return Ok(Self::Postgres(writer));
        }
        let path = super::sqlite_file(&config.database_url).ok_or_else(|| {
            DbErr::Custom("ingestion needs a SQLite database in a file, not in memory".into())
        })?;
        let wal_max_bytes = config.database.sqlite_wal_max_mib << 20;
        Ok(Self::Sqlite(Arc::new(SqliteWriter::open(
            &path,
            wal_max_bytes,
        )?)))
    }
}

/// Writer tasks: `database.ingest_writers` on Postgres; one on SQLite, which has one writer.
fn writers(db: &DatabaseConnection, config: &Config) -> usize {
    if super::is_postgres(db) {
        config.database.ingest_writers.max(1)
    } else {
        1
    }
}

/// Applies a batch in one transaction and returns each submission's outcome, in order.
/// `Err` means the transaction as a whole failed and nothing was written.
pub async fn ingest_batch(
    db: &IngestDb,
    batch: Batch,
    limits: &Limits,
) -> Result<Vec<Reply>, DbErr> {
    transaction(db, batch, limits, || {}).await.1
}

/// [`ingest_batch`], calling `before_commit` once the batch's statements have run.
async fn transaction(
    db: &IngestDb,
    batch: Batch,
    limits: &Limits,
    before_commit: impl FnOnce() + Send + 'static,
) -> (Batch, Result<Vec<Reply>, DbErr>) {
    let result = match db {
        // Boxed: the transaction's future takes kilobytes, which every batch's task would
        // otherwise copy several times over, on SQLite as well (it shares this future's type).
        IngestDb::Postgres(writer) => {
            Box::pin(writer.transaction(&batch, limits, before_commit)).await
        }
        // Blocks for the transaction: the writers have a thread of their own. The admissions
        // are awaited first, as nothing overlaps the blocking transaction (with the in-process
        // limiter they are decided before the deliveries are submitted).
        IngestDb::Sqlite(writer) => {
            let admitted = batch.admitted().await;
            writer.transaction(&batch, &admitted, limits, before_commit)
        }
    };
    (batch, result)
}

/// Each submission's delivery row, as this transaction inserted it, in batch order; `None`
/// for a delivery already stored (a duplicate).
type Claims = Vec<Option<i64>>;

/// A job's payload as the text both databases store: written straight into a buffer
/// (`Value`'s `to_string` goes through `Display` and its adapter, twice the work).
fn payload_text(job: &outbox_job::Model) -> String {
    // A `Value`'s map keys are strings, the one thing serializing it could fail on.
    serde_json::to_string(&job.payload).expect("a JSON value serializes")
}

/// Which rows of a project a transaction reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ScenesWanted<'a> {
    All,
    /// These scenes ([`ScenesRead::Scene`]), and these with the next one by position, or
    /// with every scene when one of them is the last ([`ScenesRead::SceneAndNext`]).
    Named {
        by_id: Vec<&'a str>,
        with_next: Vec<&'a str>,
    },
}

/// The rows the transitions of `submissions` read, by project.
fn scenes_wanted<'b>(
    submissions: impl IntoIterator<Item = &'b Submission>,
) -> BTreeMap<&'b str, ScenesWanted<'b>> {
    let mut wanted: BTreeMap<&str, ScenesWanted> = BTreeMap::new();
    for submission in submissions {
        let project = wanted
            .entry(submission.callback.project_id().as_str())
            .or_insert(ScenesWanted::Named {
                by_id: Vec::new(),
                with_next: Vec::new(),
            });
        match (scenes_read(&submission.callback), &mut *project) {
            (ScenesRead::Project, _) => {}
            (ScenesRead::Scene(id), ScenesWanted::Named { by_id, .. }) => by_id.push(id),
            (ScenesRead::SceneAndNext(id), ScenesWanted::Named { with_next, .. }) => {
                with_next.push(id)
            }
            (ScenesRead::Scene(_) | ScenesRead::SceneAndNext(_), ScenesWanted::All) => {}
            (ScenesRead::All, _) => *project = ScenesWanted::All,
        }
    }
    wanted
}

/// A batch's transitions, applied in memory in order: what to answer, which delivery rows to
/// take back, the jobs to queue and the metrics to record once committed.
struct Applied {
    replies: Vec<Reply>,
    rejected: Vec<i64>,
    jobs: Vec<outbox_job::Model>,
    observations: Vec<Observation>,
}

fn apply_transitions(
    batch: &Batch,
    claims: &[Option<i64>],
    admitted: &[bool],
    works: &mut HashMap<String, Work>,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Applied {
    let mut applied = Applied {
        replies: Vec::with_capacity(batch.len()),
        rejected: Vec::new(),
        jobs: Vec::new(),
        observations: Vec::new(),
    };
    for ((submission, claim), &admitted) in batch.items.iter().zip(claims).zip(admitted) {
        if !admitted {
            applied.rejected.extend(*claim);
            applied.replies.push(Err(PipelineError::NotAdmitted));
            continue;
        }
        let Some(delivery_id) = *claim else {
            applied.replies.push(Ok(IngestOutcome::Duplicate));
            continue;
        };
        let project_id = submission.callback.project_id().as_str();
        let outcome = match works.get_mut(project_id) {
            None => Err(PipelineError::ProjectNotFound),
            Some(work) => work
                .apply(
                    |state| apply_callback(state, &submission.callback, limits),
                    now,
                    &mut applied.observations,
                )
                .map_err(PipelineError::Transition),
        };
        match outcome {
            Ok(effects) => {
                applied.jobs.extend(new_job_rows(
                    project_id,
                    &effects.jobs,
                    &submission.jobs,
                    now,
                ));
                applied.replies.push(Ok(IngestOutcome::Accepted(effects)));
            }
            Err(e) => {
                applied.rejected.push(delivery_id);
                applied.replies.push(Err(e));
            }
        }
    }
    applied
}

struct Pending {
    submission: Submission,
    reply: oneshot::Sender<Reply>,
}

/// The handle requests submit deliveries through; the writer tasks stop once every handle is
/// dropped and the queue is drained.
#[derive(Clone)]
pub struct Ingestor {
    queue: mpsc::Sender<Pending>,
    db: IngestDb,
}

impl Ingestor {
    /// Opens ingestion's connections ([`IngestDb::open`]) and starts the writer tasks on a
    /// thread and runtime of their own. A writer's every step (collecting a batch, each
    /// statement's answer, the replies) then runs when it is ready, instead of waiting its turn
    /// behind the request tasks that keep the gateway's workers busy under load; on SQLite the
    /// transaction simply blocks that thread. The thread ends once every handle is dropped and
    /// the queue is drained.
    pub async fn start(
        db: &DatabaseConnection,
        config: &Config,
        limits: Limits,
    ) -> Result<Self, DbErr> {
        let writers = writers(db, config);
        let batch_max = config.database.ingest_batch_max.max(1);
        let (queue, receiver) = mpsc::channel(batch_max * writers * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let (opened, ready) = oneshot::channel();
        let (main_db, config) = (db.clone(), config.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DbErr::Custom(format!("cannot start the ingestion runtime: {e}")))?;
        std::thread::Builder::new()
            .name("scenehook-ingest".into())
            .spawn(move || {
                runtime.block_on(async move {
                    // Opened here, so that the connections' I/O is driven by this runtime.
                    let db = match IngestDb::open(&main_db, &config).await {
                        Ok(db) => db,
                        Err(e) => return drop(opened.send(Err(e))),
                    };
                    let _ = opened.send(Ok(db.clone()));
                    let mut tasks = tokio::task::JoinSet::new();
                    for _ in 0..writers {
                        let writer = Writer {
                            db: db.clone(),
                            limits,
                            batch_max,
                            receiver: receiver.clone(),
                        };
                        tasks.spawn(writer.run());
                    }
                    while tasks.join_next().await.is_some() {}
                })
            })
            .map_err(|e| DbErr::Custom(format!("cannot start the ingestion thread: {e}")))?;
        let db = ready
            .await
            .map_err(|_| DbErr::Custom("the ingestion thread stopped while starting".into()))??;
        Ok(Self { queue, db })
    }

    /// Where this ingestor writes.
    pub fn db(&self) -> &IngestDb {
        &self.db
    }

    /// Applies one delivery and answers once it is committed (or rejected).
    pub async fn submit(&self, submission: Submission) -> Reply {
        let (reply, answer) = oneshot::channel();
        let stopped = || {
            PipelineError::Db(DbErr::Conn(RuntimeErr::Internal(
                "the ingestion writers have stopped".into(),
            )))
        };
        self.queue
            .send(Pending { submission, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

struct Writer {
    db: IngestDb,
    limits: Limits,
    batch_max: usize,
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
}

impl Writer {
    async fn run(self) {
        // Submissions that repeated a delivery of the batch they came with go first next time.
        let mut held_back: Vec<Pending> = Vec::new();
        loop {
            let mut batch = Batch::default();
            let mut replies = Vec::new();
            let mut later = Vec::new();
            for pending in held_back.drain(..) {
                self.add(&mut batch, &mut replies, &mut later, pending);
            }
            // Held-back submissions must not wait behind another writer that is waiting for
            // new ones: then this writer goes without the queue for one round.
            let mut receiver = if batch.is_empty() {
                Some(self.receiver.clone().lock_owned().await)
            } else {
                self.receiver.clone().try_lock_owned().ok()
            };
            if let Some(receiver) = receiver.as_mut() {
                if batch.is_empty() {
                    match receiver.recv().await {
                        Some(pending) => self.add(&mut batch, &mut replies, &mut later, pending),
                        None => return,
                    }
                }
                while batch.len() < self.batch_max {
                    let Ok(pending) = receiver.try_recv() else {
                        break;
                    };
                    self.add(&mut batch, &mut replies, &mut later, pending);
                }
            }
            held_back = later;
            // The queue stays with this writer until its batch's statements have run: another
            // writer then collects while this one waits for its commit to be durable, rather
            // than taking the next lone webhook into a commit of its own.
            let (db, limits) = (self.db.clone(), self.limits);
            let outcomes = contain_panic(batch.len(), async move {
                apply_batch(&db, batch, &limits, move || drop(receiver)).await
            })
            .await;
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A request that gave up waiting is no longer listening; its delivery stands.
                let _ = reply.send(outcome);
            }
        }
    }

    fn add(
        &self,
        batch: &mut Batch,
        replies: &mut Vec<oneshot::Sender<Reply>>,
        later: &mut Vec<Pending>,
        pending: Pending,
    ) {
        match batch.push(pending.submission) {
            Ok(()) => replies.push(pending.reply),
            Err(submission) => later.push(Pending {
                submission: *submission,
                reply: pending.reply,
            }),
        }
    }
}

/// Runs a batch's work as a task of its own, so that a panic in it (a bug) fails that batch's
/// requests instead of stopping this writer, and with it ingestion. The transaction, dropped
/// unfinished, rolls back.
async fn contain_panic(
    size: usize,
    work: impl Future<Output = Vec<Reply>> + Send + 'static,
) -> Vec<Reply> {
    match tokio::spawn(work).await {
        Ok(outcomes) => outcomes,
        Err(e) => {
            tracing::error!(error = %e, size, "ingestion batch panicked; its requests fail");
            (0..size)
                .map(|_| {
                    Err(PipelineError::Db(DbErr::Custom(
                        "ingestion failed unexpectedly".into(),
                    )))
                })
                .collect()
        }
    }
}

/// Applies a batch: in one transaction ([`ingest_batch`]) or, if that transaction fails on a
/// statement, one delivery at a time. Returns each submission's outcome, in order.
pub async fn apply(db: &IngestDb, batch: Batch, limits: &Limits) -> Vec<Reply> {
    apply_batch(db, batch, limits, || {}).await
}

async fn apply_batch(
    db: &IngestDb,
    batch: Batch,
    limits: &Limits,
    before_commit: impl FnOnce() + Send + 'static,
) -> Vec<Reply> {
    metrics::histogram!("scenehook_ingest_batch_size").record(batch.len() as f64);
    let started = std::time::Instant::now();
    let (batch, result) = transaction(db, batch, limits, before_commit).await;
    metrics::histogram!("scenehook_ingest_transaction_seconds").record(started.elapsed());
    match result {
        Ok(outcomes) => outcomes,
        // The database is unreachable: every delivery gets the same answer (retry later),
        // without waiting out the connection timeout once per delivery.
        Err(e) if batch.len() == 1 || super::is_unavailable(&e) => (0..batch.len())
            .map(|_| Err(PipelineError::Db(e.clone())))
            .collect(),
        // A statement failed (a deadlock, a value the database refused): one delivery's
        // failure must not be every delivery's.
        Err(e) => {
            tracing::warn!(error = %e, size = batch.len(), "ingestion batch failed; applying its deliveries one by one");
            metrics::counter!("scenehook_ingest_batch_splits_total").increment(1);
            let mut outcomes = Vec::with_capacity(batch.len());
            for submission in batch.items {
                let mut single = Batch::default();
                let _ = single.push(submission);
                outcomes.push(match ingest_batch(db, single, limits).await {
                    Ok(mut outcome) => outcome.remove(0),
                    Err(e) => Err(PipelineError::Db(e)),
                });
            }
            outcomes
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_batch_fails_its_requests_and_nothing_else() {
        let outcomes = contain_panic(3, async { panic!("a bug") }).await;
        assert_eq!(outcomes.len(), 3);
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Err(PipelineError::Db(DbErr::Custom(_)))))
        );
        let outcomes = contain_panic(1, async { vec![Ok(IngestOutcome::Duplicate)] }).await;
        assert!(matches!(outcomes[..], [Ok(IngestOutcome::Duplicate)]));
    }
}
