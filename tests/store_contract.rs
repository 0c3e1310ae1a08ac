//! One contract for the store backends: the in-process one and Redis behave the same.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use scenehook::store::{
    DismissOutcome, ErrorEntry, ErrorPolicy, ErrorStats, ErrorStore, ErrorType, ListQuery,
    NewError, RateLimitStore, Severity,
    memory::{MemoryErrorStore, MemoryRateLimiter},
    redis::{self as redis_store, RedisErrorStore, RedisRateLimiter},
};

async fn stores(
    backend: Backend,
    test: &str,
    policy: ErrorPolicy,
) -> Option<(Arc<dyn ErrorStore>, Arc<dyn RateLimitStore>)> {
    match backend {
        Backend::Embedded => Some((
            Arc::new(MemoryErrorStore::new(policy)),
            Arc::new(MemoryRateLimiter::new()),
        )),
        Backend::Shared | Backend::Cluster => {
            let url = match backend {
                Backend::Cluster => cluster_url(test)?,
                _ => redis_url(test)?,
            };
            let client = redis_store::connect(&url, Duration::from_secs(2), &Default::default())
                .await
                .unwrap();
            let prefix = random_prefix();
            Some((
                Arc::new(RedisErrorStore::new(client.clone(), &prefix, policy)),
                Arc::new(RedisRateLimiter::new(client, &prefix)),
            ))
        }
    }
}

async fn sliding_window_allows_exactly_the_limit(backend: Backend) {
    let Some((_, limiter)) = stores(backend, "sliding_window", POLICY).await else {
        return;
    };
    let window = Duration::from_secs(3);
    for i in 0..5 {
        let d = limiter.hit("k", 5, window).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 4 - i);
    }
    let d = limiter.hit("k", 5, window).await.unwrap();
    assert!(!d.allowed);
    assert!(d.reset_ms <= 3000);
    assert!(
        limiter.hit("other", 5, window).await.unwrap().allowed,
        "keys are independent"
    );
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert!(
        limiter.hit("k", 5, window).await.unwrap().allowed,
        "the window slid"
    );
}

async fn identical_errors_group_and_reopen(backend: Backend) {
    let Some((store, _)) = stores(backend, "grouping", POLICY).await else {
        return;
    };
    let failure = || {
        NewError::new(Severity::Error, ErrorType::Generation, "video service down")
            .with_source("video")
    };
    let first = store.record(failure(), T0).await.unwrap();
    for i in 1..200 {
        store.record(failure(), T0 + i).await.unwrap();
    }
    let entry = store.get(&first.id, T0 + 200).await.unwrap().unwrap();
    assert_eq!(entry.count, 200);
    assert_eq!(entry.last_seen_at, T0 + 199);
    assert_eq!(store.stats(T0 + 200).await.unwrap().active, 1);
    assert_eq!(
        store
            .dismiss(&first.id, "alice", Some("fixed"), T0 + 300)
            .await
            .unwrap(),
        DismissOutcome::Dismissed
    );
    let stats = store.stats(T0 + 301).await.unwrap();
    assert_eq!((stats.active, stats.dismissed, stats.total), (0, 1, 1));
    // It comes back: active again, history kept.
    let again = store.record(failure(), T0 + 400).await.unwrap();
    assert_eq!(again.id, first.id);
    assert!(!again.dismissed);
    assert_eq!(again.count, 201);
    assert_eq!(again.reopened_count, 1);
    assert_eq!(again.dismissed_by.as_deref(), Some("alice"));
}

async fn critical_is_never_dismissed(backend: Backend) {
    let Some((store, _)) = stores(backend, "critical", POLICY).await else {
        return;
    };
    let critical = store
        .record(NewError::critical(ErrorType::System, "disk on fire"), T0)
        .await
        .unwrap();
    let warning = store
        .record(NewError::warning(ErrorType::Webhook, "odd"), T0)
        .await
        .unwrap();
    assert_eq!(
        store.dismiss(&critical.id, "bob", None, T0).await.unwrap(),
        DismissOutcome::NotDismissible
    );
    assert_eq!(
        store.dismiss("err_nope", "bob", None, T0).await.unwrap(),
        DismissOutcome::NotFound
    );
    let dismissed = store.dismiss_all("bob", None, T0 + 1).await.unwrap();
    assert_eq!(dismissed, vec![warning.id.clone()]);
    // Criticals never auto-dismiss.
    let stats = store.stats(T0 + 100 * 86_400_000).await.unwrap();
    assert_eq!(stats.by_severity.get("critical"), Some(&1));
    assert_eq!(stats.active, 1);
}

async fn success_auto_dismisses_after_its_ttl(backend: Backend) {
    let Some((store, _)) = stores(backend, "auto_dismiss", POLICY).await else {
        return;
    };
    store
        .record(NewError::success("Scene verified"), T0)
        .await
        .unwrap();
    let active = |now| {
        let store = store.clone();
        async move {
            store
                .list(
                    &ListQuery {
                        limit: 10,
                        ..Default::default()
                    },
                    now,
                )
                .await
                .unwrap()
                .errors
                .len()
        }
    };
    assert_eq!(active(T0 + 4_999).await, 1);
    // Due entries are dismissed by whichever call comes first, `stats` too, which counts them.
    let stats = store.stats(T0 + 5_000).await.unwrap();
    assert_eq!((stats.active, stats.dismissed), (0, 1));
    assert_eq!(active(T0 + 5_000).await, 0);
    let all = store
        .list(
            &ListQuery {
                limit: 10,
                include_dismissed: true,
                ..Default::default()
            },
            T0 + 5_001,
        )
        .await
        .unwrap();
    assert_eq!(all.errors[0].dismissed_by.as_deref(), Some("auto"));
    // Retention removes it later.
    assert_eq!(
        store
            .cleanup(T0 + 5_000 + POLICY.retention_ms + 1)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .stats(T0 + 5_000 + POLICY.retention_ms + 2)
            .await
            .unwrap()
            .total,
        0
    );
}

async fn list_filters_and_pages_newest_first(backend: Backend) {
    let Some((store, _)) = stores(backend, "paging", POLICY).await else {
        return;
    };
    for i in 0..25 {
        let severity = if i % 5 == 0 {
            Severity::Error
        } else {
            Severity::Warning
        };
        store
            .record(
                NewError::new(severity, ErrorType::Processing, format!("problem {i}")),
                T0 + (i / 2),
            )
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list(
                &ListQuery {
                    limit: 7,
                    cursor: cursor.clone(),
                    ..Default::default()
                },
                T0 + 100,
            )
            .await
            .unwrap();
        seen.extend(
            page.errors
                .iter()
                .map(|e| (e.last_seen_at, e.message.clone())),
        );
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 25, "every entry exactly once across pages");
    let mut sorted = seen.clone();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.0));
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        sorted.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    let errors = store
        .list(
            &ListQuery {
                limit: 100,
                severity: Some(Severity::Error),
                ..Default::default()
            },
            T0 + 100,
        )
        .await
        .unwrap();
    assert_eq!(errors.errors.len(), 5);
    let stats = store.stats(T0 + 100).await.unwrap();
    assert_eq!(stats.by_severity.get("error"), Some(&5));
    assert_eq!(stats.by_type.get("processing"), Some(&25));
}

async fn the_cap_bounds_the_store(backend: Backend) {
    let policy = ErrorPolicy {
        max_entries: 50,
        ..POLICY
    };
    let Some((store, _)) = stores(backend, "cap", policy).await else {
        return;
    };
    for i in 0..60 {
        let e = store
            .record(
                NewError::new(Severity::Info, ErrorType::System, format!("info {i}")),
                T0 + i,
            )
            .await
            .unwrap();
        if i < 5 {
            store.dismiss(&e.id, "x", None, T0 + i).await.unwrap();
        }
    }
    let stats = store.stats(T0 + 100).await.unwrap();
    assert_eq!(stats.total, 50);
    assert_eq!(stats.dismissed, 0, "dismissed entries are evicted first");
}

async fn a_hundred_thousand_distinct_entries_stay_under_the_cap(backend: Backend) {
    let policy = ErrorPolicy {
        max_entries: 2_000,
        ..POLICY
    };
    let Some((store, _)) = stores(backend, "cap_100k", policy).await else {
        return;
    };
    let critical = store
        .record(NewError::critical(ErrorType::System, "kept"), T0)
        .await
        .unwrap();
    let mut writes = Vec::with_capacity(100_000);
    for i in 0..100_000i64 {
        let severity = [Severity::Error, Severity::Warning, Severity::Info][(i % 3) as usize];
        writes.push(store.record(
            NewError::new(severity, ErrorType::Processing, format!("distinct {i}")),
            T0 + 1 + i,
        ));
    }
    let mut writes = writes.into_iter();
    loop {
        let chunk: Vec<_> = writes.by_ref().take(1000).collect();
        if chunk.is_empty() {
            break;
        }
        for r in futures::future::join_all(chunk).await {
            r.unwrap();
        }
    }
    let stats = store.stats(T0 + 200_000).await.unwrap();
    assert_eq!(stats.total, 2_000);
    assert!(
        store
            .get(&critical.id, T0 + 200_000)
            .await
            .unwrap()
            .is_some(),
        "criticals are never evicted"
    );
    // Info went first, then warnings: the newest errors survive.
    assert_eq!(stats.by_severity.get("info"), None);
    let newest = store
        .list(
            &ListQuery {
                limit: 1,
                ..Default::default()
            },
            T0 + 200_000,
        )
        .await
        .unwrap();
    assert_eq!(newest.errors[0].message, "distinct 99999");
}

/// A stream of successes (one per verified scene) recycles the successes' own room: the
/// oldest success goes, and no error's entry, active or dismissed, is evicted for them.
async fn successes_evict_only_successes(backend: Backend) {
    let policy = ErrorPolicy {
        max_entries: 50,
        max_successes: 10,
        ..POLICY
    };
    let Some((store, _)) = stores(backend, "success_cap", policy).await else {
        return;
    };
    for i in 0..20 {
        let e = store
            .record(
                NewError::new(Severity::Error, ErrorType::Generation, format!("error {i}")),
                T0 + i,
            )
            .await
            .unwrap();
        if i % 2 == 0 {
            store.dismiss(&e.id, "ops", None, T0 + i).await.unwrap();
        }
    }
    // In batches, as the reporter writes them, with one success reported twice (grouped).
    let successes: Vec<_> = (0..1_000)
        .map(|i| {
            (
                NewError::success(format!("Scene {i} verified")),
                T0 + 100 + i,
            )
        })
        .chain([(NewError::success("Scene 999 verified"), T0 + 1_200)])
        .collect();
    for batch in successes.chunks(64) {
        store.record_many(batch).await.unwrap();
    }
    let now = T0 + 1_300;
    let stats = store.stats(now).await.unwrap();
    assert_eq!(stats.by_type.get("success"), Some(&10));
    assert_eq!(stats.by_type.get("generation"), Some(&10));
    assert_eq!(stats.dismissed, 10, "dismissed errors are kept");
    assert_eq!(stats.total, 30);
    let kept = store
        .list(
            &ListQuery {
                kind: Some(ErrorType::Success),
                limit: 20,
                ..Default::default()
            },
            now,
        )
        .await
        .unwrap()
        .errors;
    let messages: Vec<_> = kept.iter().map(|e| e.message.as_str()).collect();
    let newest: Vec<_> = (990..1_000)
        .rev()
        .map(|i| format!("Scene {i} verified"))
        .collect();
    assert_eq!(messages, newest);
    assert_eq!((kept[0].count, kept[0].last_seen_at), (2, T0 + 1_200));
    // Successes count against the cap on all entries too, and go first there.
    let more_errors = (20..45).map(|i| {
        (
            NewError::new(Severity::Error, ErrorType::Generation, format!("error {i}")),
            T0 + 2_000 + i,
        )
    });
    store
        .record_many(&more_errors.collect::<Vec<_>>())
        .await
        .unwrap();
    let stats = store.stats(T0 + 3_000).await.unwrap();
    assert_eq!(stats.total, 50);
    assert_eq!(stats.by_type.get("generation"), Some(&35));
    assert_eq!(
        stats.dismissed, 10,
        "the oldest successes went, not dismissed errors"
    );
    assert_eq!(stats.by_type.get("success"), Some(&5));
}

/// Every entry as an operator sees it, ids blanked (each store makes its own), in message
/// order, and the stats.
async fn everything(store: &dyn ErrorStore, now: i64) -> (Vec<ErrorEntry>, ErrorStats) {
    let page = store
        .list(
            &ListQuery {
                include_dismissed: true,
                limit: 1_000,
                ..Default::default()
            },
            now,
        )
        .await
        .unwrap();
    let mut seen = page.errors;
    for e in &mut seen {
        e.id.clear();
    }
    seen.sort_by(|a, b| (&a.message, a.created_at).cmp(&(&b.message, b.created_at)));
    (seen, store.stats(now).await.unwrap())
}

/// The Redis script and the in-process store agree, entry for entry, over a long stream of
/// batches: grouping, reopening, auto-dismissal within and between batches, dismissals by
/// an operator, and both caps with every class of victim. Times are distinct, so that ties
/// (broken by id, which each store makes its own) never choose a victim.
async fn batches_land_as_in_the_in_process_store(backend: Backend) {
    let policy = ErrorPolicy {
        max_entries: 40,
        max_successes: 8,
        success_ttl_ms: 2_000,
        info_ttl_ms: 9_000,
        warning_ttl_ms: 30_000,
        ..POLICY
    };
    let Some((redis, _)) = stores(backend, "batches_agree", policy).await else {
        return;
    };
    let memory = MemoryErrorStore::new(policy);
    // xorshift64: the same stream every run, so that a failure reproduces.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let mut now = T0;
    let (mut full, mut reopened, mut auto_dismissed, mut errors_evicted) =
        (false, false, false, false);
    for round in 0..80 {
        let batch: Vec<_> = (0..=next(40))
            .map(|_| {
                now += 1 + next(400) as i64;
                let new = match next(7) {
                    0..=2 => NewError::success(format!("Scene {} verified", next(14))),
                    3 => NewError::new(
                        Severity::Info,
                        ErrorType::System,
                        format!("info {}", next(12)),
                    ),
                    4 => NewError::warning(ErrorType::Webhook, format!("warning {}", next(12))),
                    5 => NewError::new(
                        Severity::Error,
                        ErrorType::Generation,
                        format!("error {}", next(30)),
                    ),
                    _ => NewError::critical(ErrorType::System, format!("critical {}", next(3))),
                };
                (new, now)
            })
            .collect();
        redis.record_many(&batch).await.unwrap();
        memory.record_many(&batch).await.unwrap();
        now += 1;
        if round % 5 == 2 {
            // An operator dismisses the third newest active entry in each store: the same one.
            let active = ListQuery {
                limit: 3,
                ..Default::default()
            };
            for store in [&*redis, &memory as &dyn ErrorStore] {
                if let Some(e) = store.list(&active, now).await.unwrap().errors.get(2) {
                    store
                        .dismiss(&e.id, "ops", Some("seen"), now)
                        .await
                        .unwrap();
                }
            }
        }
        now += 1;
        let (redis_seen, memory_seen) = (
            everything(&*redis, now).await,
            everything(&memory, now).await,
        );
        assert_eq!(redis_seen, memory_seen, "after batch {round}");
        let seen = &memory_seen.0;
        full |= seen.len() == 40;
        let success = |e: &&ErrorEntry| e.kind == ErrorType::Success;
        reopened |= seen.iter().any(|e| e.reopened_count > 0);
        auto_dismissed |= seen.iter().filter(success).any(|e| e.dismissed);
        errors_evicted |= seen.len() == 40 && !seen.iter().any(|e| success(&e));
    }
    assert!(
        full && reopened && auto_dismissed && errors_evicted,
        "the stream exercises what it is for: full {full}, reopened {reopened}, \
         auto-dismissed {auto_dismissed}, errors evicted {errors_evicted}"
    );
    // One batch larger than the script's slices of 1,000 arguments: its groups, additions
    // and the ~2,500 entries its caps evict go in several commands each. Its last entries
    // repeat criticals the stream stored, so their group links come from a later slice.
    let huge: Vec<_> = (0..2_500)
        .map(|i| {
            now += 1;
            let new = if i >= 2_490 {
                NewError::critical(ErrorType::System, format!("critical {}", i % 3))
            } else if i % 2 == 0 {
                NewError::success(format!("Scene {i} of the large batch verified"))
            } else {
                NewError::new(Severity::Error, ErrorType::Generation, format!("error {i}"))
            };
            (new, now)
        })
        .collect();
    redis.record_many(&huge).await.unwrap();
    memory.record_many(&huge).await.unwrap();
    now += 1;
    let (redis_seen, memory_seen) = (
        everything(&*redis, now).await,
        everything(&memory, now).await,
    );
    assert_eq!(redis_seen, memory_seen, "after the large batch");
    assert_eq!(memory_seen.0.len(), 40);
}

backend_tests!(redis_agrees, Shared; batches_land_as_in_the_in_process_store);
backend_tests!(cluster_agrees, Cluster; batches_land_as_in_the_in_process_store);

on_all_backends!(
    successes_evict_only_successes,
    a_hundred_thousand_distinct_entries_stay_under_the_cap,
    sliding_window_allows_exactly_the_limit,
    identical_errors_group_and_reopen,
    critical_is_never_dismissed,
    success_auto_dismisses_after_its_ttl,
    list_filters_and_pages_newest_first,
    the_cap_bounds_the_store,
);

/// 10,000 identical failures make one entry; `stats` issues one EVALSHA reading one hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_failures_one_entry_and_stats_without_scanning() {
    // INFO commandstats is server-wide: a Redis of this test's own keeps the count exact.
    let Some(redis) = OwnRedis::start("redis_scale") else {
        return;
    };
    let url = redis.url();
    let client = redis_store::connect(&url, Duration::from_secs(2), &Default::default())
        .await
        .unwrap();
    let store = RedisErrorStore::new(client.clone(), &random_prefix(), POLICY);
    let writes = (0..10_000).map(|i| {
        store.record(
            NewError::new(Severity::Error, ErrorType::Automation, "stitch down"),
            T0 + i,
        )
    });
    for chunk in writes.collect::<Vec<_>>().chunks_mut(500) {
        for r in futures::future::join_all(chunk.iter_mut()).await {
            r.unwrap();
        }
    }
    let page = store
        .list(
            &ListQuery {
                limit: 10,
                ..Default::default()
            },
            T0 + 20_000,
        )
        .await
        .unwrap();
    assert_eq!(page.errors.len(), 1);
    assert_eq!(page.errors[0].count, 10_000);
    // The first call of a script loads it (NOSCRIPT, SCRIPT LOAD, EVALSHA); measure steady state.
    store.stats(T0 + 20_000).await.unwrap();
    let before = redis_store::command_calls(&client).await.unwrap();
    store.stats(T0 + 20_000).await.unwrap();
    let after = redis_store::command_calls(&client).await.unwrap();
    let delta = |name: &str| {
        let get =
            |v: &Vec<(String, u64)>| v.iter().find(|(n, _)| n == name).map(|c| c.1).unwrap_or(0);
        get(&after) - get(&before)
    };
    assert_eq!(delta("evalsha"), 1);
    assert_eq!(delta("hgetall"), 1);
    assert_eq!(delta("scan") + delta("keys"), 0);
    assert!(RedisErrorStore::stats_commands().contains("HGETALL"));
}

/// A batch of reports is one script, and a script holds Redis while it runs: however many
/// entries it records, it dismisses at most 500 due entries (as one `record` always did), so
/// that a backlog of due entries costs a few bounded calls, not one long one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_dismisses_a_bounded_number_of_due_entries() {
    use fred::interfaces::SortedSetsInterface;
    let Some(url) = redis_url("redis_expire_budget") else {
        return;
    };
    let client = redis_store::connect(&url, Duration::from_secs(2), &Default::default())
        .await
        .unwrap();
    let prefix = random_prefix();
    let policy = ErrorPolicy {
        max_entries: 10_000,
        ..POLICY
    };
    let store = RedisErrorStore::new(client.clone(), &prefix, policy);
    let infos: Vec<_> = (0..2_000)
        .map(|i| {
            let info = NewError::new(Severity::Info, ErrorType::System, format!("info {i}"));
            (info, T0)
        })
        .collect();
    for chunk in infos.chunks(500) {
        store.record_many(chunk).await.unwrap();
    }
    // All 2,000 are due (info lives 60 s); one batch of 32 comes.
    let later: Vec<_> = (0..32)
        .map(|i| {
            let warning = NewError::warning(ErrorType::Webhook, format!("warning {i}"));
            (warning, T0 + 61_000 + i)
        })
        .collect();
    store.record_many(&later).await.unwrap();
    let dismissed: u64 = client
        .zcard(format!("{{{prefix}:errors}}:dismissed"))
        .await
        .unwrap();
    assert_eq!(dismissed, 500);
}
