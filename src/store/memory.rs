//! In-process backends: the embedded default and the Redis fail-open fallback. Same
//! semantics as the Redis backends, for one instance.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    DismissOutcome, ErrorEntry, ErrorPage, ErrorPolicy, ErrorStats, ErrorStore, ListQuery,
    NewError, RateDecision, RateLimitStore, Severity, StoreError, decode_cursor, encode_cursor,
    new_error_id,
};

/// Sliding-window log per key, in process memory. Each allowed request is kept as nanoseconds
/// since the limiter started, 8 bytes instead of an `Instant`'s 16: with a high limit the log
/// is most of the gateway's memory (a million entries a minute at 17,000 requests a second).
pub struct MemoryRateLimiter {
    windows: Mutex<HashMap<String, VecDeque<u64>>>,
    calls: AtomicU64,
    started: Instant,
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        Self {
            windows: Mutex::default(),
            calls: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

impl MemoryRateLimiter {
    pub fn new() -> Self {
        Self::default()
    }
}

/// How often (in calls) idle keys are swept, so memory follows the active clients.
const SWEEP_EVERY: u64 = 4096;

#[async_trait]
impl RateLimitStore for MemoryRateLimiter {
    async fn hit(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Result<RateDecision, StoreError> {
        let mut windows = self.windows.lock();
        // Read under the lock, so that each log is appended in order. u64 nanoseconds last
        // 584 years.
        let now = self.started.elapsed().as_nanos() as u64;
        let window_ns = window.as_nanos() as u64;
        let expired = |t: &u64| now.saturating_sub(*t) >= window_ns;
        if self.calls.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            windows.retain(|_, log| log.back().is_some_and(|t| !expired(t)));
        }
        let log = windows.entry(key.to_owned()).or_default();
        while log.front().is_some_and(expired) {
            log.pop_front();
        }
        let allowed = log.len() < limit as usize;
        if allowed {
            log.push_back(now);
        }
        let reset_ms = log
            .front()
            .map(|oldest| window_ns.saturating_sub(now.saturating_sub(*oldest)) / 1_000_000)
            .unwrap_or(0);
        Ok(RateDecision {
            allowed,
            limit,
            remaining: limit.saturating_sub(log.len() as u32),
            reset_ms,
        })
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

/// The error store in process memory, with the same indexes as the Redis layout.
pub struct MemoryErrorStore {
    policy: ErrorPolicy,
    state: Mutex<ErrorState>,
}

#[derive(Default)]
struct ErrorState {
    entries: HashMap<String, (ErrorEntry, String)>,
    groups: HashMap<String, String>,
    /// (last seen, id) of active entries, all and per severity (for eviction).
    active: BTreeSet<(i64, String)>,
    active_by_severity: HashMap<Severity, BTreeSet<(i64, String)>>,
    /// (last seen, id) of every entry.
    all: BTreeSet<(i64, String)>,
    /// (dismissed at, id).
    dismissed: BTreeSet<(i64, String)>,
    /// (auto-dismiss at, id).
    auto: BTreeSet<(i64, String)>,
    stats: ErrorStats,
}

impl MemoryErrorStore {
    pub fn new(policy: ErrorPolicy) -> Self {
        Self {
            policy,
            state: Mutex::new(ErrorState::default()),
        }
    }
}

impl ErrorState {
    fn index(&mut self, entry: &ErrorEntry, at: i64) {
        self.active.insert((at, entry.id.clone()));
        self.active_by_severity
            .entry(entry.severity)
            .or_default()
            .insert((at, entry.id.clone()));
        if let Some(due) = entry.auto_dismiss_at {
            self.auto.insert((due, entry.id.clone()));
        }
    }

    fn unindex(&mut self, entry: &ErrorEntry) {
        let key = (entry.last_seen_at, entry.id.clone());
        self.active.remove(&key);
        if let Some(set) = self.active_by_severity.get_mut(&entry.severity) {
            set.remove(&key);
        }
        if let Some(due) = entry.auto_dismiss_at {
            self.auto.remove(&(due, entry.id.clone()));
        }
    }

    fn count_active(&mut self, entry: &ErrorEntry, delta: i64) {
        let bump = |n: &mut u64| *n = n.saturating_add_signed(delta);
        bump(&mut self.stats.active);
        bump(
            self.stats
                .by_severity
                .entry(entry.severity.as_str().into())
                .or_default(),
        );
        bump(
            self.stats
                .by_type
                .entry(entry.kind.as_str().into())
                .or_default(),
        );
        bump(
            self.stats
                .by_severity_and_type
                .entry((entry.severity.as_str().into(), entry.kind.as_str().into()))
                .or_default(),
        );
        self.stats.by_severity.retain(|_, n| *n > 0);
        self.stats.by_type.retain(|_, n| *n > 0);
        self.stats.by_severity_and_type.retain(|_, n| *n > 0);
    }

    fn dismiss(&mut self, id: &str, by: &str, reason: Option<&str>, now: i64) {
        let Some((entry, _)) = self.entries.get_mut(id) else {
            return;
        };
        if entry.dismissed {
            return;
        }
        entry.dismissed = true;
        entry.dismissed_at = Some(now);
        entry.dismissed_by = Some(by.to_owned());
        entry.dismiss_reason = reason.map(str::to_owned);
        let entry = entry.clone();
        self.unindex(&entry);
        self.dismissed.insert((now, entry.id.clone()));
        self.count_active(&entry, -1);
        self.stats.dismissed += 1;
    }

    /// Dismisses entries whose auto-dismiss time has come.
    fn expire(&mut self, now: i64) {
        let due: Vec<String> = self
            .auto
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| id.clone())
            .collect();
        for id in due {
            self.dismiss(&id, "auto", Some("auto-dismissed"), now);
        }
    }

    fn remove(&mut self, id: &str) {
        let Some((entry, fp)) = self.entries.remove(id) else {
            return;
        };
        if self.groups.get(&fp).is_some_and(|g| g == id) {
            self.groups.remove(&fp);
        }
        self.all.remove(&(entry.last_seen_at, entry.id.clone()));
        if entry.dismissed {
            self.dismissed
                .remove(&(entry.dismissed_at.unwrap_or_default(), entry.id.clone()));
            self.stats.dismissed = self.stats.dismissed.saturating_sub(1);
        } else {
            self.unindex(&entry);
            self.count_active(&entry, -1);
        }
    }

    /// Keeps at most `cap` entries: evicts the oldest dismissed, then the oldest info,
    /// warning, error; never a critical.
    fn enforce_cap(&mut self, cap: u64) {
        while self.entries.len() as u64 > cap {
            let victim = self
                .dismissed
                .first()
                .map(|(_, id)| id.clone())
                .or_else(|| {
                    [Severity::Info, Severity::Warning, Severity::Error]
                        .iter()
                        .find_map(|sev| self.active_by_severity.get(sev)?.first())
                        .map(|(_, id)| id.clone())
                });
            match victim {
                Some(id) => self.remove(&id),
                None => break,
            }
        }
    }

    fn totals(&self) -> ErrorStats {
        let mut stats = self.stats.clone();
        stats.total = stats.active + stats.dismissed;
        stats
    }
}

#[async_trait]
impl ErrorStore for MemoryErrorStore {
    async fn record(&self, new: NewError, now: i64) -> Result<ErrorEntry, StoreError> {
        let fp = new.fingerprint();
        let ttl = self.policy.ttl_ms(&new);
        let mut s = self.state.lock();
        s.expire(now);
        if let Some(id) = s.groups.get(&fp).cloned()
            && let Some((existing, _)) = s.entries.get(&id).cloned()
        {
            let mut entry = existing.clone();
            entry.count += 1;
            entry.last_seen_at = now;
            s.all.remove(&(existing.last_seen_at, id.clone()));
            s.all.insert((now, id.clone()));
            if existing.dismissed {
                s.dismissed
                    .remove(&(existing.dismissed_at.unwrap_or_default(), id.clone()));
                s.stats.dismissed = s.stats.dismissed.saturating_sub(1);
                entry.dismissed = false;
                entry.reopened_count += 1;
                s.count_active(&entry, 1);
            } else {
                s.unindex(&existing);
            }
            entry.auto_dismiss_at = ttl.map(|t| now + t);
            s.index(&entry, now);
            s.entries.insert(id, (entry.clone(), fp));
            return Ok(entry);
        }
        let entry = new.into_entry(new_error_id(now), now, &self.policy);
        let id = entry.id.clone();
        s.groups.insert(fp.clone(), id.clone());
        s.all.insert((now, id.clone()));
        s.index(&entry, now);
        s.count_active(&entry, 1);
        s.entries.insert(id, (entry.clone(), fp));
        s.enforce_cap(self.policy.max_entries);
        Ok(entry)
    }

    async fn get(&self, id: &str, now: i64) -> Result<Option<ErrorEntry>, StoreError> {
        let mut s = self.state.lock();
        s.expire(now);
        Ok(s.entries.get(id).map(|(e, _)| e.clone()))
    }

    async fn list(&self, q: &ListQuery, now: i64) -> Result<ErrorPage, StoreError> {
        let mut s = self.state.lock();
        s.expire(now);
        let empty = BTreeSet::new();
        let index = match (q.include_dismissed, q.severity) {
            (true, _) => &s.all,
            (false, Some(severity)) => s.active_by_severity.get(&severity).unwrap_or(&empty),
            (false, None) => &s.active,
        };
        let after = q.cursor.as_deref().and_then(decode_cursor);
        let mut errors = Vec::new();
        let mut next_cursor = None;
        for (score, id) in index.iter().rev() {
            if let Some((cs, cid)) = &after
                && (*score, id) >= (*cs, cid)
            {
                continue;
            }
            let Some((entry, _)) = s.entries.get(id) else {
                continue;
            };
            if q.severity.is_some_and(|sev| sev != entry.severity)
                || q.kind.is_some_and(|k| k != entry.kind)
            {
                continue;
            }
            if errors.len() == q.limit {
                let last: &ErrorEntry = errors.last().expect("limit is at least 1");
                next_cursor = Some(encode_cursor(last.last_seen_at, &last.id));
                break;
            }
            errors.push(entry.clone());
        }
        Ok(ErrorPage {
            errors,
            next_cursor,
        })
    }

    async fn dismiss(
        &self,
        id: &str,
        by: &str,
        reason: Option<&str>,
        now: i64,
    ) -> Result<DismissOutcome, StoreError> {
        let mut s = self.state.lock();
        s.expire(now);
        match s.entries.get(id) {
            None => Ok(DismissOutcome::NotFound),
            Some((entry, _)) if !entry.dismissible => Ok(DismissOutcome::NotDismissible),
            Some(_) => {
                s.dismiss(id, by, reason, now);
                Ok(DismissOutcome::Dismissed)
            }
        }
    }

    async fn dismiss_all(
        &self,
        by: &str,
        reason: Option<&str>,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut s = self.state.lock();
        s.expire(now);
        let ids: Vec<String> = s
            .active
            .iter()
            .filter(|(_, id)| s.entries.get(id).is_some_and(|(e, _)| e.dismissible))
            .map(|(_, id)| id.clone())
            .collect();
        for id in &ids {
            s.dismiss(id, by, reason, now);
        }
        Ok(ids)
    }

    async fn stats(&self, now: i64) -> Result<ErrorStats, StoreError> {
        let mut s = self.state.lock();
        s.expire(now);
        Ok(s.totals())
    }

    async fn cleanup(&self, now: i64) -> Result<u64, StoreError> {
        let mut s = self.state.lock();
        s.expire(now);
        let cutoff = now - self.policy.retention_ms;
        let old: Vec<String> = s
            .dismissed
            .iter()
            .take_while(|(at, _)| *at < cutoff)
            .map(|(_, id)| id.clone())
            .collect();
        for id in &old {
            s.remove(id);
        }
        Ok(old.len() as u64)
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}
