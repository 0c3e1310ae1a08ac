//! In-process backends: the embedded default and the Redis fail-open fallback. Same
//! semantics as the Redis backends, for one instance.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    DismissOutcome, ErrorEntry, ErrorPage, ErrorPolicy, ErrorStats, ErrorStore, ErrorType,
    ListQuery, NewError, RateDecision, RateLimitStore, Severity, StoreError, decode_cursor,
    encode_cursor, new_error_id,
};

/// Sliding-window log per key, in process memory, counted in slots of a millisecond: the
/// allowed requests of one millisecond share an entry, so a key's log holds at most one entry
/// per millisecond of its window whatever its limit (60,000, under 1 MiB, for a minute). A log
/// of single requests grew with the rate: two million entries and 32 MiB of buffer at the
/// soak's 31,000 requests a second under the benchmark's limit of 10⁹ a minute. A slot leaves
/// the window when its last instant does, so a request counts for up to 1 ms longer than its
/// window, never shorter: no window ever holds more than the limit.
pub struct MemoryRateLimiter {
    windows: Mutex<HashMap<String, Log>>,
    calls: AtomicU64,
    started: Instant,
}

/// One key's allowed requests, oldest slot first.
#[derive(Default)]
struct Log {
    slots: VecDeque<Slot>,
    /// The sum of the slots' counts, kept so that a decision need not add up to 60,000
    /// slots.
    total: u32,
}

/// A slot: its number (milliseconds since the limiter started, 44 bits: 557 years) and the
/// requests allowed in it (20 bits; a fuller millisecond takes a second entry). 8 bytes, as a
/// request's own timestamp took, so a client sending less than one request a millisecond costs
/// no more than before.
#[derive(Clone, Copy)]
struct Slot(u64);

const _: () = assert!(std::mem::size_of::<Slot>() == 8);

impl Slot {
    const COUNT_BITS: u32 = 20;
    const FULL: u64 = (1 << Self::COUNT_BITS) - 1;
    const NS: u64 = 1_000_000;

    fn first(number: u64) -> Self {
        Self((number << Self::COUNT_BITS) | 1)
    }

    fn number(self) -> u64 {
        self.0 >> Self::COUNT_BITS
    }

    fn count(self) -> u32 {
        (self.0 & Self::FULL) as u32
    }

    /// Counts one more request in this slot if it is slot `number` and has room.
    fn add(&mut self, number: u64) -> bool {
        let fits = self.number() == number && (self.0 & Self::FULL) < Self::FULL;
        if fits {
            self.0 += 1;
        }
        fits
    }

    /// How long before `now` (nanoseconds) the slot's last instant was.
    fn age(self, now: u64) -> u64 {
        now.saturating_sub((self.number() + 1) * Self::NS - 1)
    }
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
        let expired = |slot: Slot| slot.age(now) >= window_ns;
        if self.calls.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            windows.retain(|_, log| log.slots.back().is_some_and(|&slot| !expired(slot)));
        }
        let log = windows.entry(key.to_owned()).or_default();
        while let Some(&slot) = log.slots.front() {
            if !expired(slot) {
                break;
            }
            log.slots.pop_front();
            log.total -= slot.count();
        }
        let allowed = log.total < limit;
        if allowed {
            let number = now / Slot::NS;
            if !log.slots.back_mut().is_some_and(|last| last.add(number)) {
                log.slots.push_back(Slot::first(number));
            }
            log.total += 1;
        }
        let reset_ms = log
            .slots
            .front()
            .map(|&oldest| window_ns.saturating_sub(oldest.age(now)) / 1_000_000)
            .unwrap_or(0);
        Ok(RateDecision {
            allowed,
            limit,
            remaining: limit.saturating_sub(log.total),
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

/// An entry's id as the indexes hold it: each index shares the one allocation, so that a kept
/// entry costs its indexes a pointer each rather than a copy of its id (with the stats' keys,
/// copies were a seventh of the bytes a kept entry allocated; docs/performance-log.md,
/// *The error store under a last-frame load*).
type Id = Arc<str>;

/// (score, id): the order of every index, as in the Redis store's sorted sets.
type Scored = (i64, Id);

/// What an entry's place in the indexes and counts depends on.
#[derive(Clone, Copy)]
struct IndexKeys {
    severity: Severity,
    kind: ErrorType,
    last_seen_at: i64,
    auto_dismiss_at: Option<i64>,
}

impl IndexKeys {
    fn of(entry: &ErrorEntry) -> Self {
        Self {
            severity: entry.severity,
            kind: entry.kind,
            last_seen_at: entry.last_seen_at,
            auto_dismiss_at: entry.auto_dismiss_at,
        }
    }
}

#[derive(Default)]
struct ErrorState {
    /// Each entry with its group's fingerprint.
    entries: HashMap<Id, (ErrorEntry, Arc<str>)>,
    /// Fingerprint → the group's entry.
    groups: HashMap<Arc<str>, Id>,
    /// (last seen, id) of active entries, all and per severity (for eviction).
    active: BTreeSet<Scored>,
    active_by_severity: HashMap<Severity, BTreeSet<Scored>>,
    /// (last seen, id) of every entry.
    all: BTreeSet<Scored>,
    /// (dismissed at, id).
    dismissed: BTreeSet<Scored>,
    /// (auto-dismiss at, id).
    auto: BTreeSet<Scored>,
    /// (last seen, id) of success entries, active or dismissed: they have a cap of their own.
    successes: BTreeSet<Scored>,
    /// Active entries by severity and type; the stats' maps are made from it when asked.
    active_counts: HashMap<(Severity, ErrorType), u64>,
    dismissed_count: u64,
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
    /// The indexes' shared copy of `id`.
    fn id(&self, id: &str) -> Option<Id> {
        self.entries.get_key_value(id).map(|(id, _)| id.clone())
    }

    fn index(&mut self, id: &Id, entry: &ErrorEntry, at: i64) {
        self.active.insert((at, id.clone()));
        self.active_by_severity
            .entry(entry.severity)
            .or_default()
            .insert((at, id.clone()));
        if let Some(due) = entry.auto_dismiss_at {
            self.auto.insert((due, id.clone()));
        }
    }

    fn unindex(&mut self, id: &Id, keys: IndexKeys) {
        let key = (keys.last_seen_at, id.clone());
        self.active.remove(&key);
        if let Some(set) = self.active_by_severity.get_mut(&keys.severity) {
            set.remove(&key);
        }
        if let Some(due) = keys.auto_dismiss_at {
            self.auto.remove(&(due, id.clone()));
        }
    }

    fn count_active(&mut self, keys: IndexKeys, delta: i64) {
        let key = (keys.severity, keys.kind);
        let n = self.active_counts.entry(key).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.active_counts.remove(&key);
        }
    }

    fn dismiss(&mut self, id: &str, by: &str, reason: Option<&str>, now: i64) {
        let Some(id) = self.id(id) else {
            return;
        };
        let (entry, _) = self.entries.get_mut(&id).expect("the id was just found");
        if entry.dismissed {
            return;
        }
        entry.dismissed = true;
        entry.dismissed_at = Some(now);
        entry.dismissed_by = Some(by.to_owned());
        entry.dismiss_reason = reason.map(str::to_owned);
        let keys = IndexKeys::of(entry);
        self.unindex(&id, keys);
        self.count_active(keys, -1);
        self.dismissed.insert((now, id));
        self.dismissed_count += 1;
    }

    /// Dismisses entries whose auto-dismiss time has come.
    fn expire(&mut self, now: i64) {
        while let Some((at, id)) = self.auto.first().cloned()
            && at <= now
        {
            self.dismiss(&id, "auto", Some("auto-dismissed"), now);
        }
    }

    fn remove(&mut self, id: &str) {
        let Some((id, (entry, fp))) = self.entries.remove_entry(id) else {
            return;
        };
        if self.groups.get(&fp).is_some_and(|g| *g == id) {
            self.groups.remove(&fp);
        }
        self.all.remove(&(entry.last_seen_at, id.clone()));
        self.successes.remove(&(entry.last_seen_at, id.clone()));
        if entry.dismissed {
            self.dismissed
                .remove(&(entry.dismissed_at.unwrap_or_default(), id));
            self.dismissed_count = self.dismissed_count.saturating_sub(1);
        } else {
            let keys = IndexKeys::of(&entry);
            self.unindex(&id, keys);
            self.count_active(keys, -1);
        }
    }

    /// Keeps at most `policy.max_successes` success entries, evicting the oldest, so that a
    /// stream of successes recycles its own room; then at most `policy.max_entries` entries:
    /// evicts the oldest success, the oldest dismissed, then the oldest info, warning, error;
    /// never a critical. A success never displaces an error's entry.
    fn enforce_caps(&mut self, policy: &ErrorPolicy) {
        while self.successes.len() as u64 > policy.max_successes {
            let (_, id) = self.successes.first().cloned().expect("more than the cap");
            self.remove(&id);
        }
        while self.entries.len() as u64 > policy.max_entries {
            let victim = self
                .successes
                .first()
                .or_else(|| self.dismissed.first())
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

    /// Records `entries` in order and returns the last one as stored. Due entries are
    /// dismissed once, at the batch's earliest time, and the caps apply once, after the last
    /// entry: the same entries go as if each entry had applied them (the oldest by the caps'
    /// order), except that an entry evicted by its own batch's caps and reported again in it
    /// is counted again instead of starting anew. The Redis store's script does the same.
    fn record_batch(
        &mut self,
        entries: &[(NewError, i64)],
        policy: &ErrorPolicy,
    ) -> Option<ErrorEntry> {
        let earliest = entries.iter().map(|(_, at)| *at).min()?;
        self.expire(earliest);
        let mut last = None;
        for (new, now) in entries {
            last = Some(self.upsert(new.clone(), *now, policy));
        }
        self.enforce_caps(policy);
        last
    }

    /// Records `new` at `now`, or counts it again on its group's entry.
    fn upsert(&mut self, new: NewError, now: i64, policy: &ErrorPolicy) -> ErrorEntry {
        let fp = new.fingerprint();
        let ttl = policy.ttl_ms(&new);
        if let Some(id) = self.groups.get(fp.as_str()).cloned()
            && let Some((mut entry, fp)) = self.entries.remove(&id)
        {
            let before = IndexKeys::of(&entry);
            self.all.remove(&(entry.last_seen_at, id.clone()));
            self.all.insert((now, id.clone()));
            if entry.kind == ErrorType::Success {
                self.successes.remove(&(entry.last_seen_at, id.clone()));
                self.successes.insert((now, id.clone()));
            }
            if entry.dismissed {
                self.dismissed
                    .remove(&(entry.dismissed_at.unwrap_or_default(), id.clone()));
                self.dismissed_count = self.dismissed_count.saturating_sub(1);
                entry.dismissed = false;
                entry.reopened_count += 1;
                self.count_active(before, 1);
            } else {
                self.unindex(&id, before);
            }
            entry.count += 1;
            entry.last_seen_at = now;
            entry.auto_dismiss_at = ttl.map(|t| now + t);
            self.index(&id, &entry, now);
            self.entries.insert(id, (entry.clone(), fp));
            return entry;
        }
        let entry = new.into_entry(new_error_id(now), now, policy);
        let id: Id = entry.id.as_str().into();
        let fp: Arc<str> = fp.into();
        self.groups.insert(fp.clone(), id.clone());
        self.all.insert((now, id.clone()));
        if entry.kind == ErrorType::Success {
            self.successes.insert((now, id.clone()));
        }
        self.index(&id, &entry, now);
        self.count_active(IndexKeys::of(&entry), 1);
        self.entries.insert(id, (entry.clone(), fp));
        entry
    }

    fn totals(&self) -> ErrorStats {
        let mut stats = ErrorStats {
            dismissed: self.dismissed_count,
            ..ErrorStats::default()
        };
        for (&(severity, kind), &n) in &self.active_counts {
            stats.active += n;
            *stats
                .by_severity
                .entry(severity.as_str().into())
                .or_default() += n;
            *stats.by_type.entry(kind.as_str().into()).or_default() += n;
            stats
                .by_severity_and_type
                .insert((severity.as_str().into(), kind.as_str().into()), n);
        }
        stats.total = stats.active + stats.dismissed;
        stats
    }
}

#[async_trait]
impl ErrorStore for MemoryErrorStore {
    async fn record(&self, new: NewError, now: i64) -> Result<ErrorEntry, StoreError> {
        let entry = (self.state.lock())
            .record_batch(&[(new, now)], &self.policy)
            .expect("one entry was recorded");
        Ok(entry)
    }

    async fn record_many(&self, entries: &[(NewError, i64)]) -> Result<(), StoreError> {
        self.state.lock().record_batch(entries, &self.policy);
        Ok(())
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
        // A page starts right after its cursor: a seek, not a walk past every newer entry.
        let older = match q.cursor.as_deref().and_then(decode_cursor) {
            Some((score, id)) => index.range(..(score, Id::from(id))),
            None => index.range(..),
        };
        let mut errors = Vec::new();
        let mut next_cursor = None;
        for (_, id) in older.rev() {
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
            .map(|(_, id)| id.to_string())
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
        let old: Vec<Id> = s
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every request is counted, in one entry per millisecond rather than one per request: a
    /// high limit does not cost memory in proportion to the rate.
    #[tokio::test]
    async fn a_busy_key_keeps_one_entry_per_millisecond() {
        let limiter = MemoryRateLimiter::new();
        let window = Duration::from_secs(60);
        let started = Instant::now();
        for _ in 0..50_000 {
            assert!(limiter.hit("k", 1_000_000, window).await.unwrap().allowed);
        }
        let elapsed_ms = started.elapsed().as_millis() as usize;
        let windows = limiter.windows.lock();
        let log = &windows["k"];
        assert_eq!(log.total, 50_000);
        assert_eq!(log.slots.iter().map(|s| s.count()).sum::<u32>(), 50_000);
        assert!(
            log.slots.len() <= elapsed_ms + 2,
            "{} entries in {elapsed_ms} ms",
            log.slots.len()
        );
    }

    /// A slot takes requests of its own millisecond until its count is full; then the same
    /// millisecond starts another.
    #[test]
    fn a_slot_counts_its_own_millisecond_up_to_its_width() {
        let mut slot = Slot::first(5);
        assert!(slot.add(5));
        assert_eq!((slot.number(), slot.count()), (5, 2));
        assert!(!slot.add(6));
        let mut nearly_full = Slot((5 << Slot::COUNT_BITS) | (Slot::FULL - 1));
        assert!(nearly_full.add(5));
        assert_eq!(nearly_full.count(), Slot::FULL as u32);
        assert!(!nearly_full.add(5));
        assert_eq!(nearly_full.number(), 5);
    }

    /// Requests in slots of their own add up to the limit; a denied one takes no place, and
    /// the reset counts from the oldest slot.
    #[tokio::test]
    async fn the_limit_holds_across_slots() {
        let limiter = MemoryRateLimiter::new();
        let window = Duration::from_secs(60);
        for i in 0..10u32 {
            let decision = limiter.hit("k", 10, window).await.unwrap();
            assert!(decision.allowed);
            assert_eq!(decision.remaining, 9 - i);
            std::thread::sleep(Duration::from_millis(2));
        }
        let denied = limiter.hit("k", 10, window).await.unwrap();
        assert!(!denied.allowed);
        assert_eq!(denied.remaining, 0);
        assert!(
            (59_000..=60_000).contains(&denied.reset_ms),
            "{}",
            denied.reset_ms
        );
        let windows = limiter.windows.lock();
        assert_eq!(windows["k"].slots.len(), 10);
        assert_eq!(windows["k"].total, 10);
    }
}
