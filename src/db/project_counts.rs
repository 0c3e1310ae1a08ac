//! The `scenehook_projects` gauge's counts: projects by status, one status at a time.
//!
//! Each count reads the status index's entries for that status, so it takes time in
//! proportion to the projects that have it: the active statuses stay small, while completed
//! projects are kept and grow by the million (~130 ms for 1.9 million on SQLite, warm). A
//! status whose last count was cheap is counted on every scrape; one whose last count took
//! longer (waiting for a connection included) is counted again only once [`RECOUNT_AFTER`]
//! times as long has passed, so that counting never takes a connection more than ~1 % of the
//! time. Its gauge lags by at most that long.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use entity::project;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QuerySelect, Select,
    sea_query::{Asterisk, Expr, Func},
};

use crate::domain::ProjectStatus;

/// A count that took less than this is taken again on every scrape.
const CHEAP: Duration = Duration::from_millis(10);
/// A dearer count is taken again once this many times as long as it took has passed.
const RECOUNT_AFTER: u32 = 100;

/// The last count of each status, shared by the scrapes of one instance.
#[derive(Default)]
pub struct ProjectCounts {
    last: parking_lot::Mutex<HashMap<ProjectStatus, Counted>>,
}

#[derive(Clone, Copy, Debug)]
struct Counted {
    /// `None` until a count finishes in time; a count cut off keeps the last known number
    /// (and took at least `took`).
    projects: Option<i64>,
    took: Duration,
    at: Instant,
}

impl Counted {
    fn due(&self, now: Instant) -> bool {
        self.took < CHEAP || now.duration_since(self.at) >= self.took * RECOUNT_AFTER
    }
}

impl ProjectCounts {
    /// Every status's latest known count, counting again the statuses that are due, until
    /// `deadline`. A count cut off by the deadline is remembered as having taken that long,
    /// so it is not tried again on every scrape; a status never counted in time is left out.
    /// A count that fails fails the whole refresh (the gauges keep their last values).
    pub async fn refresh(
        &self,
        db: &DatabaseConnection,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<(ProjectStatus, i64)>, DbErr> {
        let mut known = Vec::with_capacity(ProjectStatus::ALL.len());
        for status in ProjectStatus::ALL {
            let last = self.last.lock().get(&status).copied();
            let counted = match last {
                Some(counted) if !counted.due(Instant::now()) => counted,
                _ => {
                    let at = Instant::now();
                    let projects = match tokio::time::timeout_at(
                        deadline,
                        count_of(status).into_tuple::<i64>().one(db),
                    )
                    .await
                    {
                        Ok(n) => Some(n?.unwrap_or(0)),
                        Err(_) => None,
                    };
                    let counted = Counted {
                        projects: projects.or(last.and_then(|last| last.projects)),
                        took: at.elapsed(),
                        at,
                    };
                    self.last.lock().insert(status, counted);
                    counted
                }
            };
            known.extend(counted.projects.map(|n| (status, n)));
        }
        Ok(known)
    }
}

/// `SELECT COUNT(*) FROM projects WHERE status = ?`, answered from the status index alone.
fn count_of(status: ProjectStatus) -> Select<project::Entity> {
    project::Entity::find()
        .select_only()
        .column_as(Expr::from(Func::count(Expr::col(Asterisk))), "n")
        .filter(project::Column::Status.eq(status.as_str()))
}

#[cfg(test)]
mod tests {
    use sea_orm::{DbBackend, QueryTrait};

    use super::*;

    fn counted(took_ms: u64, ago_ms: u64) -> (Counted, Instant) {
        let now = Instant::now() + Duration::from_secs(3600);
        let counted = Counted {
            projects: Some(1),
            took: Duration::from_millis(took_ms),
            at: now - Duration::from_millis(ago_ms),
        };
        (counted, now)
    }

    #[test]
    fn a_cheap_count_is_always_due_and_a_dear_one_after_a_hundred_times_its_length() {
        let (cheap, now) = counted(9, 0);
        assert!(cheap.due(now));
        let (dear, now) = counted(80, 7_999);
        assert!(!dear.due(now));
        let (dear, now) = counted(80, 8_000);
        assert!(dear.due(now));
    }

    #[tokio::test]
    async fn each_status_is_counted_from_the_status_index_alone() {
        let (_dir, db) = crate::db::migrated().await;
        let steps = crate::db::query_plan(
            &db,
            count_of(ProjectStatus::Completed).build(DbBackend::Sqlite),
        )
        .await;
        assert!(
            steps.len() == 1
                && steps[0].starts_with(
                    "SEARCH projects USING COVERING INDEX idx_projects_status_created (status=?)"
                ),
            "{steps:?}"
        );
    }

    #[tokio::test]
    async fn counts_come_back_for_every_status_and_a_dear_one_waits() {
        let (_dir, db) = crate::db::migrated().await;
        let add = async |id: &str, status| {
            let at = chrono::Utc::now().to_rfc3339();
            crate::db::insert_projects(&db, [(id.to_owned(), status, at)]).await;
        };
        add("p1", ProjectStatus::Completed).await;
        add("p2", ProjectStatus::Completed).await;
        add("p3", ProjectStatus::Generating).await;
        let counts = ProjectCounts::default();
        let later = || tokio::time::Instant::now() + Duration::from_secs(5);
        let expected = |completed| {
            ProjectStatus::ALL.map(|status| {
                let n = match status {
                    ProjectStatus::Completed => completed,
                    ProjectStatus::Generating => 1,
                    _ => 0,
                };
                (status, n)
            })
        };
        assert_eq!(counts.refresh(&db, later()).await.unwrap(), expected(2));

        // A cheap count follows every change.
        add("p4", ProjectStatus::Completed).await;
        assert_eq!(counts.refresh(&db, later()).await.unwrap(), expected(3));

        // A count that took long is not taken again before its time.
        counts
            .last
            .lock()
            .get_mut(&ProjectStatus::Completed)
            .unwrap()
            .took = Duration::from_secs(1);
        add("p5", ProjectStatus::Completed).await;
        assert_eq!(counts.refresh(&db, later()).await.unwrap(), expected(3));
    }

    #[tokio::test]
    async fn a_count_cut_off_by_the_deadline_keeps_the_last_one_and_counts_as_dear() {
        use sea_orm::TransactionTrait;
        let (_dir, db) = crate::db::migrated().await;
        let counts = ProjectCounts::default();
        let in_50_ms = || tokio::time::Instant::now() + Duration::from_millis(50);
        // The pool's one SQLite connection held: no count finishes. The first waits out the
        // deadline; the others start past it.
        let held = db.begin().await.unwrap();
        assert_eq!(counts.refresh(&db, in_50_ms()).await.unwrap(), []);
        drop(held);
        // Drafts, cut off after 50 ms, wait 5 s; the other statuses are counted.
        let counted = counts
            .refresh(&db, in_50_ms() + Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            counted,
            ProjectStatus::ALL[1..]
                .iter()
                .map(|&status| (status, 0))
                .collect::<Vec<_>>()
        );
        // Cut off again, they keep their last counts.
        let held = db.begin().await.unwrap();
        assert_eq!(counts.refresh(&db, in_50_ms()).await.unwrap(), counted);
        drop(held);
    }
}
