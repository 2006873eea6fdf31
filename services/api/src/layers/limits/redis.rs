//! Redis limiter shared by every replica: one Lua script makes each decision atomically.
//! A sorted set per subject holds one member per admitted unit (scored by admission time);
//! calendar windows use a counter per subject and UTC day.
use std::collections::HashMap;
use std::ops::RangeInclusive;

use redis::aio::ConnectionManager;

use super::backend::{Backend, Subject};
use super::usage::{self, Counter, KEEP_MS, Outcome};
use crate::policy::CallClass;
use crate::policy::windows::{DAY_MS, Span, WindowState, day_start, longest_sliding};

/// KEYS: per subject, its sorted set then its day counter.
/// ARGV: now, n, nonce, subject count; per subject: window count, ms to keep; per window:
/// kind (0 sliding, 1 day), span in ms (for days: ms until midnight), limit.
/// Returns count, retry ms and reset ms for every window in order, then 1 if admitted.
const SCRIPT: &str = r#"
local now, n, nonce, subjects = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local pos, out, fits, plan = 5, {}, true, {}
for i = 1, subjects do
  local zkey, dkey = KEYS[2 * i - 1], KEYS[2 * i]
  local windows, keep = tonumber(ARGV[pos]), tonumber(ARGV[pos + 1])
  pos = pos + 2
  local uses_day = false
  for _ = 1, windows do
    local kind, span, limit = tonumber(ARGV[pos]), tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2])
    pos = pos + 3
    local count, retry, reset = 0, 0, 0
    if kind == 1 then
      uses_day = true
      count = tonumber(redis.call('GET', dkey) or '0')
      retry = span
      if count > 0 then reset = span end
    else
      local min = '(' .. (now - span)
      count = redis.call('ZCOUNT', zkey, min, '+inf')
      if count > 0 then
        local oldest = redis.call('ZRANGEBYSCORE', zkey, min, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
        reset = tonumber(oldest[2]) + span - now
      end
      if count + n > limit then
        if n > limit then
          retry = span
        else
          local kth = redis.call('ZRANGEBYSCORE', zkey, min, '+inf', 'WITHSCORES', 'LIMIT', count + n - limit - 1, 1)
          retry = tonumber(kth[2]) + span - now
        end
      end
    end
    if count + n > limit then fits = false end
    out[#out + 1] = count
    out[#out + 1] = retry
    out[#out + 1] = reset
  end
  plan[i] = { zkey, dkey, keep, uses_day }
end
if fits and n > 0 then
  for i = 1, subjects do
    local p = plan[i]
    if p[3] > 0 then
      local members = {}
      for u = 1, n do
        members[#members + 1] = now
        members[#members + 1] = nonce .. ':' .. u
      end
      redis.call('ZADD', p[1], unpack(members))
      redis.call('ZREMRANGEBYSCORE', p[1], '-inf', now - p[3])
      redis.call('PEXPIRE', p[1], p[3])
    end
    if p[4] then
      redis.call('INCRBY', p[2], n)
      redis.call('PEXPIRE', p[2], 2 * 86400000)
    end
  end
  out[#out + 1] = 1
else
  out[#out + 1] = 0
end
return out
"#;

/// Longest a decision may wait for Redis.
const DECISION_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

pub struct RedisBackend {
    conn: ConnectionManager,
    script: redis::Script,
    /// Prefix of every key, so several deployments (or tests) can share one Redis.
    prefix: String,
}

impl RedisBackend {
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        // Concurrent decisions share one connection: without TCP_NODELAY a script sent while
        // another is unanswered waits in the kernel for the first reply (Nagle).
        let info = redis::IntoConnectionInfo::into_connection_info(url)?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info)?;
        let conn = ConnectionManager::new(client).await?;
        Ok(RedisBackend { conn, script: redis::Script::new(SCRIPT), prefix: prefix.to_string() })
    }

    fn calls_key(&self, org: &str, hour: i64) -> String {
        format!("{}calls:{org}:{hour}", self.prefix)
    }
}

/// A slow or unreachable Redis must not stall API calls: give up after `DECISION_TIMEOUT`
/// (and let the --rate-limit-on-backend-error policy decide).
async fn within<T>(request: impl std::future::Future<Output = redis::RedisResult<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(DECISION_TIMEOUT, request)
        .await
        .map_err(|_| anyhow::anyhow!("Redis did not answer within {DECISION_TIMEOUT:?}"))?
        .map_err(Into::into)
}

#[tonic::async_trait]
impl Backend for RedisBackend {
    async fn decide(&self, subjects: &[Subject<'_>], n: u64, now: i64) -> anyhow::Result<Vec<Vec<WindowState>>> {
        let mut invocation = self.script.prepare_invoke();
        let nonce = format!("{now}:{}", rand::random::<u64>());
        invocation.arg(now).arg(n).arg(&nonce).arg(subjects.len());
        for s in subjects {
            invocation.key(format!("{}{}", self.prefix, s.key));
            invocation.key(format!("{}{}:day:{}", self.prefix, s.key, day_start(now) / DAY_MS));
            let keep = longest_sliding(s.windows);
            invocation.arg(s.windows.len()).arg(keep);
            for w in s.windows {
                match w.span {
                    Span::Sliding(ms) => invocation.arg(0).arg(ms).arg(w.limit),
                    Span::Day => invocation.arg(1).arg(day_start(now) + DAY_MS - now).arg(w.limit),
                };
            }
        }
        let mut conn = self.conn.clone();
        let raw: Vec<i64> = within(invocation.invoke_async(&mut conn)).await?;
        let mut values = raw.chunks_exact(3);
        Ok(subjects
            .iter()
            .map(|s| {
                s.windows
                    .iter()
                    .map(|_| {
                        let v = values.next().unwrap_or(&[0, 0, 0]);
                        WindowState { count: v[0].max(0) as u64, retry_ms: v[1], reset_ms: v[2] }
                    })
                    .collect()
            })
            .collect())
    }

    async fn add_calls(&self, counts: &[(Counter, u64)], _now: i64) -> anyhow::Result<()> {
        // One hash per organization and hour, a field per class and outcome.
        let mut pipe = redis::pipe();
        for (c, n) in counts {
            let key = self.calls_key(&c.org, c.hour);
            pipe.hincr(&key, c.field(), *n).ignore().pexpire(&key, KEEP_MS).ignore();
        }
        let mut conn = self.conn.clone();
        within(pipe.query_async::<()>(&mut conn)).await
    }

    async fn calls(&self, org: &str, hours: RangeInclusive<i64>) -> anyhow::Result<Vec<(CallClass, Outcome, u64)>> {
        let mut pipe = redis::pipe();
        for hour in hours {
            pipe.hgetall(self.calls_key(org, hour));
        }
        let mut conn = self.conn.clone();
        let found: Vec<HashMap<String, u64>> = within(pipe.query_async(&mut conn)).await?;
        Ok(found
            .iter()
            .flatten()
            .filter_map(|(field, n)| usage::parse_field(field).map(|(class, outcome)| (class, outcome, *n)))
            .collect())
    }
}
