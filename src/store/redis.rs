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
    types::{ClusterHash, CustomCommand, config::TlsConnector, scripts::Script},
};

use crate::config::RedisTlsConfig;

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
/// dead Redis answers with an error instead of a hang. A TLS URL (`rediss://…`) connects with
/// `tls`'s certificates over webpki's roots, as the Postgres connections do, rather than
/// fred's default of the system's store, which a slim container may not have.
pub async fn connect(
    url: &str,
    command_timeout: Duration,
    tls: &RedisTlsConfig,
) -> Result<Client, StoreError> {
    let config = match without_tls(url) {
        Some(plain) => {
            let mut config = Config::from_url(&plain)?;
            let client = crate::tls::client_config(&tls.settings())
                .map_err(|e| StoreError(format!("TLS: {e}")))?;
            config.tls = Some(TlsConnector::from(client).into());
            config
        }
        None => Config::from_url(url)?,
    };
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

/// The same URL without TLS in its scheme (`rediss://` → `redis://`, `rediss-cluster://` →
/// `redis-cluster://`, and Valkey's), if its scheme asks for TLS.
pub fn without_tls(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (base, mode) = scheme
        .split_once('-')
        .map_or((scheme, None), |(b, m)| (b, Some(m)));
    let plain = match base.to_ascii_lowercase().as_str() {
        "rediss" => "redis",
        "valkeys" => "valkey",
        _ => return None,
    };
    Some(match mode {
        Some(mode) => format!("{plain}-{mode}://{rest}"),
        None => format!("{plain}://{rest}"),
    })
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
///
/// Work on many entries sends each sorted set or shared hash one command for all of them
/// (`ZADD`/`ZREM`/`HSET`/`HDEL` with many members), not one per entry: in a batch of
/// successes, that per-entry work was most of the script's time.
const ERRORS_PRELUDE: &str = r#"
local base = KEYS[1]
local function k(s) return base .. ':' .. s end
-- `cmd key args...` (`cmd args...` when key is nil) as one command, or one per 1,000
-- arguments (an even count, so that score/member and field/value pairs stay whole): Lua's
-- `unpack` has a bounded stack. Returns the replies of a command that answers one value per
-- argument (HMGET), joined in order.
local function call_many(cmd, key, args)
  local replies = {}
  for i = 1, #args, 1000 do
    local last, reply = math.min(i + 999, #args)
    if key then
      reply = redis.call(cmd, key, unpack(args, i, last))
    else
      reply = redis.call(cmd, unpack(args, i, last))
    end
    if type(reply) == 'table' then
      for j = 1, #reply do replies[i + j - 1] = reply[j] end
    end
  end
  return replies
end
-- Sorted-set additions wait here until `flush_adds` (before any read of those sets).
local adds = {}
local function add_later(set, score, id)
  local list = adds[set]
  if not list then list = {} adds[set] = list end
  list[#list + 1] = score
  list[#list + 1] = id
end
local function flush_adds()
  for set, list in pairs(adds) do call_many('ZADD', k(set), list) end
  adds = {}
end
local function index(e, score)
  add_later('active', score, e.id)
  add_later('active:' .. e.severity, score, e.id)
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
local function mark_dismissed(e, now, by, reason)
  e.dismissed = true
  e.dismissedAt = now
  e.dismissedBy = by
  if reason and reason ~= '' then e.dismissReason = reason else e.dismissReason = cjson.null end
  counts(e, -1)
  bump('dismissed', 1)
  save(e)
end
local function dismiss(e, now, by, reason)
  if e.dismissed then return end
  mark_dismissed(e, now, by, reason)
  unindex(e)
  redis.call('ZADD', k('dismissed'), now, e.id)
end
-- Ids grouped by severity, for the per-severity indexes.
local function by_severity(list, e)
  local ids = list[e.severity]
  if not ids then ids = {} list[e.severity] = ids end
  ids[#ids + 1] = e.id
end
-- At most 500 due entries are dismissed per script, however many entries it records: a
-- script holds Redis, every instance's rate-limit decisions included, while it runs.
local expire_budget = 500
local function expire(now)
  if expire_budget <= 0 then return end
  local due = redis.call('ZRANGEBYSCORE', k('auto'), '-inf', now, 'LIMIT', 0, expire_budget)
  expire_budget = expire_budget - #due
  if #due == 0 then return end
  local gone, sevs, dismissed, at = {}, {}, {}, string.format('%d', now)
  for _, id in ipairs(due) do
    local e = load(id)
    if e and not e.dismissed then
      mark_dismissed(e, now, 'auto', 'auto-dismissed')
      gone[#gone + 1] = id
      by_severity(sevs, e)
      dismissed[#dismissed + 1] = at
      dismissed[#dismissed + 1] = id
    end
  end
  call_many('ZREM', k('auto'), due)
  call_many('ZREM', k('active'), gone)
  for sev, ids in pairs(sevs) do call_many('ZREM', k('active:' .. sev), ids) end
  call_many('ZADD', k('dismissed'), dismissed)
end
-- Removes entries for good: documents, group links, every index, counters.
local function remove_many(ids)
  if #ids == 0 then return end
  local fps, owners, keys, active, sevs, dismissed = {}, {}, {}, {}, {}, {}
  for _, id in ipairs(ids) do
    local stored = redis.call('HMGET', k('e:' .. id), 'doc', 'fp')
    local e, fp = stored[1] and cjson.decode(stored[1]), stored[2]
    if fp then
      fps[#fps + 1] = fp
      owners[#owners + 1] = id
    end
    keys[#keys + 1] = k('e:' .. id)
    if e then
      if e.dismissed then
        dismissed[#dismissed + 1] = id
        bump('dismissed', -1)
      else
        active[#active + 1] = id
        by_severity(sevs, e)
        counts(e, -1)
      end
    end
  end
  if #fps > 0 then
    local linked = call_many('HMGET', k('groups'), fps)
    local unlink = {}
    for i, fp in ipairs(fps) do
      if linked[i] == owners[i] then unlink[#unlink + 1] = fp end
    end
    call_many('HDEL', k('groups'), unlink)
  end
  call_many('DEL', nil, keys)
  call_many('ZREM', k('all'), ids)
  call_many('ZREM', k('successes'), ids)
  call_many('ZREM', k('dismissed'), dismissed)
  call_many('ZREM', k('active'), active)
  call_many('ZREM', k('auto'), active)
  for sev, list in pairs(sevs) do call_many('ZREM', k('active:' .. sev), list) end
end
"#;

/// `record_batch(entries, cap, max_successes)`: records entries in order and returns the last
/// one's document, as the in-process store's `record_batch` does. Each entry is `{fp, doc,
/// at, due, id, severity, type}`: the time it was seen and its auto-dismissal time ('' for
/// none) come as the decimal strings the sorted sets take, so that no command formats a Lua
/// number again. Due entries are dismissed once, at the batch's earliest time, and the caps
/// apply once, after the last entry: the same entries go as if each entry had applied them
/// (the oldest by the caps' order), in a few commands instead of a few per entry. The one
/// difference: an entry that its own batch's caps evict and that comes again in that batch
/// is counted again, where one entry at a time would have evicted it and started anew.
const RECORD_FUNCTION: &str = r#"
local function record_batch(entries, cap, max_successes)
  local earliest = tonumber(entries[1].at)
  for _, n in ipairs(entries) do earliest = math.min(earliest, tonumber(n.at)) end
  expire(earliest)
  local fps = {}
  for i, n in ipairs(entries) do fps[i] = n.fp end
  local groups = {}
  local linked = call_many('HMGET', k('groups'), fps)
  for i, fp in ipairs(fps) do
    if linked[i] then groups[fp] = linked[i] end
  end
  local new_groups = {}
  local last
  for _, n in ipairs(entries) do
    local at, due = n.at, n.due
    local e = groups[n.fp] and load(groups[n.fp])
    if e then
      e.count = e.count + 1
      e.lastSeenAt = tonumber(at)
      if e.dismissed then
        e.dismissed = false
        e.reopenedCount = (e.reopenedCount or 0) + 1
        redis.call('ZREM', k('dismissed'), e.id)
        bump('dismissed', -1)
        counts(e, 1)
      end
      if due ~= '' then
        e.autoDismissAt = tonumber(due)
        add_later('auto', due, e.id)
      end
      last = cjson.encode(e)
      redis.call('HSET', k('e:' .. e.id), 'doc', last)
    else
      e = {id = n.id, severity = n.severity, type = n.type}
      redis.call('HSET', k('e:' .. e.id), 'doc', n.doc, 'fp', n.fp)
      groups[n.fp] = e.id
      new_groups[#new_groups + 1] = n.fp
      new_groups[#new_groups + 1] = e.id
      if due ~= '' then add_later('auto', due, e.id) end
      counts(e, 1)
      last = n.doc
    end
    index(e, at)
    add_later('all', at, e.id)
    if e.type == 'success' then add_later('successes', at, e.id) end
  end
  call_many('HSET', k('groups'), new_groups)
  flush_adds()
  -- Successes recycle their own room: the oldest successes go, never an error's entry.
  local excess = redis.call('ZCARD', k('successes')) - max_successes
  if excess > 0 then remove_many(redis.call('ZRANGE', k('successes'), 0, excess - 1)) end
  -- The cap on all entries: the oldest successes, the oldest dismissed, then the oldest info,
  -- warning, error; never a critical.
  excess = redis.call('ZCARD', k('all')) - cap
  for _, set in ipairs({'successes', 'dismissed', 'active:info', 'active:warning', 'active:error'}) do
    if excess <= 0 then break end
    local victims = redis.call('ZRANGE', k(set), 0, excess - 1)
    remove_many(victims)
    excess = excess - #victims
  end
  return last
end
-- ARGV: cap, max_successes, then 7 fields per entry (see `record_batch`).
local function record_args()
  local entries = {}
  for i = 3, #ARGV, 7 do
    entries[#entries + 1] = {fp = ARGV[i], doc = ARGV[i + 1], at = ARGV[i + 2],
      due = ARGV[i + 3], id = ARGV[i + 4], severity = ARGV[i + 5], type = ARGV[i + 6]}
  end
  return record_batch(entries, tonumber(ARGV[1]), tonumber(ARGV[2]))
end
"#;

const RECORD_BODY: &str = r#"
return record_args()
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
remove_many(old)
return #old
"#;

/// The global error store in Redis.
pub struct RedisErrorStore {
    client: Client,
    base: String,
    policy: ErrorPolicy,
    record: Script,
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

    /// The record script's arguments: the caps, then per entry its fingerprint, document, time,
    /// auto-dismissal time ('' for none), id, severity and type (so that the script decodes no
    /// document to index a new entry). The returned document is the last entry's, as stored.
    fn record_args<'a>(
        &self,
        entries: impl ExactSizeIterator<Item = (&'a NewError, i64)>,
    ) -> Result<Vec<String>, StoreError> {
        let mut args = Vec::with_capacity(2 + 7 * entries.len());
        args.push(self.policy.max_entries.to_string());
        args.push(self.policy.max_successes.to_string());
        for (new, now) in entries {
            let entry = new.clone().into_entry(new_error_id(now), now, &self.policy);
            let due = entry
                .auto_dismiss_at
                .map(|t| t.to_string())
                .unwrap_or_default();
            let doc = serde_json::to_string(&entry).map_err(|e| StoreError(e.to_string()))?;
            args.extend([
                new.fingerprint(),
                doc,
                now.to_string(),
                due,
                entry.id,
                entry.severity.as_str().to_owned(),
                entry.kind.as_str().to_owned(),
            ]);
        }
        Ok(args)
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
        let args = self.record_args(std::iter::once((&new, now)))?;
        let raw: String = self.run(&self.record, args).await?;
        decode(&raw)
    }

    async fn record_many(&self, entries: &[(NewError, i64)]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let args = self.record_args(entries.iter().map(|(new, at)| (new, *at)))?;
        let _: String = self.run(&self.record, args).await?;
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

#[cfg(test)]
mod tests {
    use super::without_tls;

    #[test]
    fn tls_schemes_are_told_apart_and_stripped() {
        for (url, plain) in [
            (
                "rediss://:pw@cache:6380/1",
                Some("redis://:pw@cache:6380/1"),
            ),
            (
                "rediss-cluster://a:7000?node=b:7001",
                Some("redis-cluster://a:7000?node=b:7001"),
            ),
            ("REDISS://cache:6380", Some("redis://cache:6380")),
            ("valkeys://cache:6380", Some("valkey://cache:6380")),
            ("redis://cache:6379", None),
            ("redis-cluster://a:7000", None),
            ("", None),
        ] {
            assert_eq!(without_tls(url).as_deref(), plain, "{url}");
        }
    }
}
