//! Redis backends, shared by every instance; Redis Cluster works too.
//!
//! Every decision is one `EVALSHA` of a script loaded once (reloaded on `NOSCRIPT`): one round
//! trip, atomic, reading the clock with `redis.call('TIME')` where instances must agree.
//! Keys of one script share a `{…}` hash tag, so each script touches one cluster slot.
//!
//! Error store layout, under the tag `{<prefix>:errors}` (`P` below):
//! - `P:e:<id>` hash: `doc` (the entry as JSON) and `fp` (its grouping fingerprint);
//! - `P:groups` hash fingerprint → id; `P:counts` hash of active/dismissed and per
//!   severity/type active counts, kept current by every script, so `stats` is one `HGETALL`;
//! - sorted sets `P:active`, `P:active:<severity>`, `P:all`, `P:successes` (score: last seen),
//!   `P:dismissed` (dismissed at), `P:auto` (auto-dismiss at). Due auto-dismissals are applied,
//!   bounded, by each script. Successes beyond their own cap evict the oldest success; the cap
//!   on all entries evicts the oldest success, oldest dismissed, then oldest info, warning,
//!   error.

use std::time::Duration;

use async_trait::async_trait;
use fred::{
    prelude::*,
    types::{ClusterHash, CustomCommand, scripts::Script},
};

use super::{
    DismissOutcome, ErrorEntry, ErrorPage, ErrorPolicy, ErrorStats, ErrorStore, ListQuery,
    NewError, RateDecision, RateLimitStore, StoreError, new_error_id,
};

impl From<fred::error::Error> for StoreError {
    fn from(e: fred::error::Error) -> Self {
        StoreError(e.to_string())
    }
}

/// Connects one client (fred pipelines concurrent commands on it) with bounded timeouts, so a
/// dead Redis answers with an error instead of a hang.
pub async fn connect(url: &str, command_timeout: Duration) -> Result<Client, StoreError> {
    let config = Config::from_url(url)?;
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = command_timeout;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build()?;
    client.init().await?;
    Ok(client)
}

/// Sends `PING`, for readiness.
pub async fn ping(client: &Client) -> Result<(), StoreError> {
    let _: String = client.ping(None).await?;
    Ok(())
}

const RATE_LIMIT_SCRIPT: &str = r#"
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local member = ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
local allowed = 0
if count < limit then
  redis.call('ZADD', key, now, member)
  count = count + 1
  allowed = 1
end
redis.call('PEXPIRE', key, math.ceil(window / 1000))
local reset = 0
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
if oldest[2] then reset = math.floor((tonumber(oldest[2]) + window - now) / 1000) end
return {allowed, count, reset}
"#;

/// The sliding-window log in a Redis sorted set per key, scored by Redis server time.
pub struct RedisRateLimiter {
    client: Client,
    script: Script,
    prefix: String,
    /// Makes set members unique across instances for requests in the same microsecond.
    instance: String,
    seq: std::sync::atomic::AtomicU64,
}

impl RedisRateLimiter {
    pub fn new(client: Client, prefix: &str) -> Self {
        Self {
            client,
            script: Script::from_lua(RATE_LIMIT_SCRIPT),
            prefix: prefix.to_owned(),
            instance: crate::domain::ids::random_token(8),
            seq: Default::default(),
        }
    }
}

#[async_trait]
impl RateLimitStore for RedisRateLimiter {
    async fn hit(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Result<RateDecision, StoreError> {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let redis_key = format!("{{{}:rl:{key}}}", self.prefix);
        let (allowed, count, reset): (i64, i64, i64) = self
            .script
            .evalsha_with_reload(
                &self.client,
                redis_key,
                vec![
                    limit.to_string(),
                    window.as_micros().to_string(),
                    format!("{}:{seq}", self.instance),
                ],
            )
            .await?;
        Ok(RateDecision {
            allowed: allowed == 1,
            limit,
            remaining: limit.saturating_sub(u32::try_from(count).unwrap_or(u32::MAX)),
            reset_ms: u64::try_from(reset).unwrap_or(0),
        })
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}

/// Lua shared by the error-store scripts: key naming, counters, dismissal, expiry, removal.
const ERRORS_PRELUDE: &str = r#"
local base = KEYS[1]
local function k(s) return base .. ':' .. s end
local function index(e, score)
  redis.call('ZADD', k('active'), score, e.id)
  redis.call('ZADD', k('active:' .. e.severity), score, e.id)
end
local function unindex(e)
  redis.call('ZREM', k('active'), e.id)
  redis.call('ZREM', k('active:' .. e.severity), e.id)
  redis.call('ZREM', k('auto'), e.id)
end
-- Counter changes add up here and reach the counters hash once, at the script's end (or
-- before a script reads it): a batch of successes moves the same few counters many times.
local pending = {}
local function bump(field, d) pending[field] = (pending[field] or 0) + d end
local function flush_counts()
  for field, d in pairs(pending) do
    if d ~= 0 then redis.call('HINCRBY', k('counts'), field, d) end
  end
  pending = {}
end
local function counts(e, d)
  bump('active', d)
  bump('s:' .. e.severity, d)
  bump('t:' .. e.type, d)
  bump('x:' .. e.severity .. ':' .. e.type, d)
end
local function load(id)
  local raw = redis.call('HGET', k('e:' .. id), 'doc')
  if not raw then return nil end
  return cjson.decode(raw)
end
local function save(e) redis.call('HSET', k('e:' .. e.id), 'doc', cjson.encode(e)) end
local function dismiss(e, now, by, reason)
  if e.dismissed then return end
  e.dismissed = true
  e.dismissedAt = now
  e.dismissedBy = by
  if reason and reason ~= '' then e.dismissReason = reason else e.dismissReason = cjson.null end
  unindex(e)
  redis.call('ZADD', k('dismissed'), now, e.id)
  counts(e, -1)
  bump('dismissed', 1)
  save(e)
end
-- At most 500 due entries are dismissed per script, however many entries it records: a
-- script holds Redis, every instance's rate-limit decisions included, while it runs.
local expire_budget = 500
local function expire(now)
  if expire_budget <= 0 then return end
  local due = redis.call('ZRANGEBYSCORE', k('auto'), '-inf', now, 'LIMIT', 0, expire_budget)
  expire_budget = expire_budget - #due
  for _, id in ipairs(due) do
    local e = load(id)
    if e then dismiss(e, now, 'auto', 'auto-dismissed') else redis.call('ZREM', k('auto'), id) end
  end
end
local function remove(id)
  local stored = redis.call('HMGET', k('e:' .. id), 'doc', 'fp')
  local e, fp = stored[1] and cjson.decode(stored[1]), stored[2]
  if fp and redis.call('HGET', k('groups'), fp) == id then redis.call('HDEL', k('groups'), fp) end
  redis.call('DEL', k('e:' .. id))
  redis.call('ZREM', k('all'), id)
  redis.call('ZREM', k('successes'), id)
  if e then
    if e.dismissed then
      redis.call('ZREM', k('dismissed'), id)
      bump('dismissed', -1)
    else
      unindex(e)
      counts(e, -1)
    end
  end
end
"#;

/// `record(fp, newdoc, now, cap, max_successes, ttl)`: one entry, as the in-process store's
/// `record` does, caps included. Shared by `RECORD_BODY` and `RECORD_MANY_BODY`.
const RECORD_FUNCTION: &str = r#"
local function record(fp, newdoc, now, cap, max_successes, ttl)
  expire(now)
  local existing = redis.call('HGET', k('groups'), fp)
  if existing then
    local e = load(existing)
    if e then
      e.count = e.count + 1
      e.lastSeenAt = now
      if e.dismissed then
        e.dismissed = false
        e.reopenedCount = (e.reopenedCount or 0) + 1
        redis.call('ZREM', k('dismissed'), e.id)
        bump('dismissed', -1)
        counts(e, 1)
      end
      if ttl >= 0 then
        e.autoDismissAt = now + ttl
        redis.call('ZADD', k('auto'), now + ttl, e.id)
      end
      index(e, now)
      redis.call('ZADD', k('all'), now, e.id)
      if e.type == 'success' then redis.call('ZADD', k('successes'), now, e.id) end
      local doc = cjson.encode(e)
      redis.call('HSET', k('e:' .. e.id), 'doc', doc)
      return doc
    end
  end
  local e = cjson.decode(newdoc)
  redis.call('HSET', k('e:' .. e.id), 'doc', newdoc, 'fp', fp)
  redis.call('HSET', k('groups'), fp, e.id)
  index(e, now)
  redis.call('ZADD', k('all'), now, e.id)
  if ttl >= 0 then redis.call('ZADD', k('auto'), now + ttl, e.id) end
  counts(e, 1)
  -- Successes recycle their own room: the oldest success goes, never an error's entry.
  if e.type == 'success' then
    redis.call('ZADD', k('successes'), now, e.id)
    local excess = redis.call('ZCARD', k('successes')) - max_successes
    while excess > 0 do
      remove(redis.call('ZRANGE', k('successes'), 0, 0)[1])
      excess = excess - 1
    end
  end
  -- The hard cap: evict the oldest success, the oldest dismissed, then the oldest info,
  -- warning, error; never a critical.
  local excess = redis.call('ZCARD', k('all')) - cap
  while excess > 0 do
    local victim = redis.call('ZRANGE', k('successes'), 0, 0)[1]
    if not victim then victim = redis.call('ZRANGE', k('dismissed'), 0, 0)[1] end
    for _, sev in ipairs({'info', 'warning', 'error'}) do
      if victim then break end
      victim = redis.call('ZRANGE', k('active:' .. sev), 0, 0)[1]
    end
    if not victim then break end
    remove(victim)
    excess = excess - 1
  end
  return newdoc
end
"#;

const RECORD_BODY: &str = r#"
return record(ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]))
"#;

/// ARGV: cap, max_successes, then (fp, doc, now, ttl) per entry.
const RECORD_MANY_BODY: &str = r#"
local cap, max_successes = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 3, #ARGV, 4 do
  record(ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), cap, max_successes, tonumber(ARGV[i + 3]))
end
return (#ARGV - 2) / 4
"#;

const GET_BODY: &str = r#"
expire(tonumber(ARGV[2]))
return redis.call('HGET', k('e:' .. ARGV[1]), 'doc')
"#;

const LIST_BODY: &str = r#"
local index, max, cid, limit, sev, typ, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6], tonumber(ARGV[7])
expire(now)
local out = {}
local last_score = nil
local last_id = nil
local more = 0
local offset = 0
local batch = 200
local scanned = 0
while scanned < 20000 do
  local rows = redis.call('ZREVRANGEBYSCORE', k(index), max, '-inf', 'WITHSCORES', 'LIMIT', offset, batch)
  if #rows == 0 then break end
  for i = 1, #rows, 2 do
    local id, score = rows[i], tonumber(rows[i + 1])
    scanned = scanned + 1
    local skip = cid ~= '' and score == tonumber(max) and id >= cid
    if not skip then
      local raw = redis.call('HGET', k('e:' .. id), 'doc')
      if raw then
        local e = cjson.decode(raw)
        if (sev == '' or e.severity == sev) and (typ == '' or e.type == typ) then
          if #out == limit then more = 1 break end
          out[#out + 1] = raw
          last_score = score
          last_id = id
        end
      end
    end
  end
  if more == 1 then break end
  offset = offset + batch
end
local cursor = ''
if more == 1 then cursor = string.format('%d', last_score) .. ':' .. last_id end
return {cursor, out}
"#;

const DISMISS_BODY: &str = r#"
local id, now, by, reason = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
expire(now)
local e = load(id)
if not e then return 'not_found' end
if not e.dismissible then return 'not_dismissible' end
dismiss(e, now, by, reason)
return 'dismissed'
"#;

const DISMISS_ALL_BODY: &str = r#"
local now, by, reason = tonumber(ARGV[1]), ARGV[2], ARGV[3]
expire(now)
local done = {}
for _, id in ipairs(redis.call('ZRANGE', k('active'), 0, -1)) do
  local e = load(id)
  if e and e.dismissible and not e.dismissed then
    dismiss(e, now, by, reason)
    done[#done + 1] = id
  end
end
return done
"#;

const STATS_BODY: &str = r#"
expire(tonumber(ARGV[1]))
flush_counts()
return redis.call('HGETALL', k('counts'))
"#;

const CLEANUP_BODY: &str = r#"
local now, retention = tonumber(ARGV[1]), tonumber(ARGV[2])
expire(now)
local old = redis.call('ZRANGEBYSCORE', k('dismissed'), '-inf', '(' .. (now - retention), 'LIMIT', 0, 1000)
for _, id in ipairs(old) do remove(id) end
return #old
"#;

/// The global error store in Redis.
pub struct RedisErrorStore {
    client: Client,
    base: String,
    policy: ErrorPolicy,
    record: Script,
    record_many: Script,
    get: Script,
    list: Script,
    dismiss: Script,
    dismiss_all: Script,
    stats: Script,
    cleanup: Script,
}

/// The prelude, then `body` as a function whose counter changes are written when it returns.
fn script(body: &str) -> Script {
    Script::from_lua(format!(
        "{ERRORS_PRELUDE}\nlocal function main()\n{body}\nend\nlocal result = main()\nflush_counts()\nreturn result"
    ))
}

fn decode(raw: &str) -> Result<ErrorEntry, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError(format!("corrupt error entry: {e}")))
}

impl RedisErrorStore {
    pub fn new(client: Client, prefix: &str, policy: ErrorPolicy) -> Self {
        Self {
            client,
            base: format!("{{{prefix}:errors}}"),
            policy,
            record: script(&format!("{RECORD_FUNCTION}\n{RECORD_BODY}")),
            record_many: script(&format!("{RECORD_FUNCTION}\n{RECORD_MANY_BODY}")),
            get: script(GET_BODY),
            list: script(LIST_BODY),
            dismiss: script(DISMISS_BODY),
            dismiss_all: script(DISMISS_ALL_BODY),
            stats: script(STATS_BODY),
            cleanup: script(CLEANUP_BODY),
        }
    }

    async fn run<R: FromValue>(&self, script: &Script, args: Vec<String>) -> Result<R, StoreError> {
        Ok(script
            .evalsha_with_reload(&self.client, self.base.clone(), args)
            .await?)
    }

    /// A new entry's script arguments: fingerprint, document, time, time to live (-1: none).
    fn record_args(&self, new: NewError, now: i64) -> Result<[String; 4], StoreError> {
        let fp = new.fingerprint();
        let ttl = self.policy.ttl_ms(&new).unwrap_or(-1);
        let entry = new.into_entry(new_error_id(now), now, &self.policy);
        let doc = serde_json::to_string(&entry).map_err(|e| StoreError(e.to_string()))?;
        Ok([fp, doc, now.to_string(), ttl.to_string()])
    }

    /// The commands `stats` sends, for the documentation and its test: one `EVALSHA` whose
    /// script reads one hash (plus a bounded expiry pass), never a key scan.
    pub fn stats_commands() -> &'static str {
        STATS_BODY
    }
}

#[async_trait]
impl ErrorStore for RedisErrorStore {
    async fn record(&self, new: NewError, now: i64) -> Result<ErrorEntry, StoreError> {
        let [fp, doc, now, ttl] = self.record_args(new, now)?;
        let raw: String = self
            .run(
                &self.record,
                vec![
                    fp,
                    doc,
                    now,
                    self.policy.max_entries.to_string(),
                    self.policy.max_successes.to_string(),
                    ttl,
                ],
            )
            .await?;
        decode(&raw)
    }

    async fn record_many(&self, entries: &[(NewError, i64)]) -> Result<(), StoreError> {
        let mut args = Vec::with_capacity(2 + 4 * entries.len());
        args.push(self.policy.max_entries.to_string());
        args.push(self.policy.max_successes.to_string());
        for (new, at) in entries {
            args.extend(self.record_args(new.clone(), *at)?);
        }
        let _: i64 = self.run(&self.record_many, args).await?;
        Ok(())
    }

    async fn get(&self, id: &str, now: i64) -> Result<Option<ErrorEntry>, StoreError> {
        let raw: Option<String> = self
            .run(&self.get, vec![id.to_owned(), now.to_string()])
            .await?;
        raw.as_deref().map(decode).transpose()
    }

    async fn list(&self, q: &ListQuery, now: i64) -> Result<ErrorPage, StoreError> {
        // Active entries of one severity have an index of their own: no filtering scan.
        let index = match (q.include_dismissed, q.severity) {
            (true, _) => "all".to_owned(),
            (false, Some(severity)) => format!("active:{}", severity.as_str()),
            (false, None) => "active".to_owned(),
        };
        let (max, cid) = match q.cursor.as_deref().and_then(super::decode_cursor) {
            Some((score, id)) => (score.to_string(), id),
            None => ("+inf".to_owned(), String::new()),
        };
        let (cursor, docs): (String, Vec<String>) = self
            .run(
                &self.list,
                vec![
                    index,
                    max,
                    cid,
                    q.limit.to_string(),
                    q.severity.map(|s| s.as_str()).unwrap_or("").to_owned(),
                    q.kind.map(|t| t.as_str()).unwrap_or("").to_owned(),
                    now.to_string(),
                ],
            )
            .await?;
        Ok(ErrorPage {
            errors: docs.iter().map(|d| decode(d)).collect::<Result<_, _>>()?,
            next_cursor: (!cursor.is_empty()).then_some(cursor),
        })
    }

    async fn dismiss(
        &self,
        id: &str,
        by: &str,
        reason: Option<&str>,
        now: i64,
    ) -> Result<DismissOutcome, StoreError> {
        let outcome: String = self
            .run(
                &self.dismiss,
                vec![
                    id.to_owned(),
                    now.to_string(),
                    by.to_owned(),
                    reason.unwrap_or("").to_owned(),
                ],
            )
            .await?;
        Ok(match outcome.as_str() {
            "dismissed" => DismissOutcome::Dismissed,
            "not_dismissible" => DismissOutcome::NotDismissible,
            _ => DismissOutcome::NotFound,
        })
    }

    async fn dismiss_all(
        &self,
        by: &str,
        reason: Option<&str>,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        self.run(
            &self.dismiss_all,
            vec![
                now.to_string(),
                by.to_owned(),
                reason.unwrap_or("").to_owned(),
            ],
        )
        .await
    }

    async fn stats(&self, now: i64) -> Result<ErrorStats, StoreError> {
        let pairs: Vec<String> = self.run(&self.stats, vec![now.to_string()]).await?;
        let mut stats = ErrorStats::default();
        for pair in pairs.chunks(2) {
            let [field, value] = pair else { continue };
            let n: u64 = value.parse::<i64>().unwrap_or(0).max(0) as u64;
            if n == 0 {
                continue;
            }
            match field.split_once(':') {
                Some(("s", sev)) => {
                    stats.by_severity.insert(sev.to_owned(), n);
                }
                Some(("t", typ)) => {
                    stats.by_type.insert(typ.to_owned(), n);
                }
                Some(("x", pair)) => {
                    if let Some((sev, typ)) = pair.split_once(':') {
                        stats
                            .by_severity_and_type
                            .insert((sev.to_owned(), typ.to_owned()), n);
                    }
                }
                _ if field == "active" => stats.active = n,
                _ if field == "dismissed" => stats.dismissed = n,
                _ => {}
            }
        }
        stats.total = stats.active + stats.dismissed;
        Ok(stats)
    }

    async fn cleanup(&self, now: i64) -> Result<u64, StoreError> {
        self.run(
            &self.cleanup,
            vec![now.to_string(), self.policy.retention_ms.to_string()],
        )
        .await
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}

/// Counts Redis commands by name from `INFO commandstats`, for tests and the load benchmark.
pub async fn command_calls(client: &Client) -> Result<Vec<(String, u64)>, StoreError> {
    let info: String = client
        .custom(
            CustomCommand::new_static("INFO", ClusterHash::FirstKey, false),
            vec!["commandstats"],
        )
        .await?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect())
}
