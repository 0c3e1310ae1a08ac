//! The error store's data: entries, queries, stats, and the policy (time to live per
//! severity, retention, cap) both backends apply.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::text_enum::text_enum;

text_enum!(
    /// How bad an entry is.
    #[derive(PartialOrd, Ord, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    Severity {
        Critical => "critical",
        Error => "error",
        Warning => "warning",
        Info => "info",
    }
);

text_enum!(
    /// What part of the system an entry is about.
    #[derive(PartialOrd, Ord, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    ErrorType {
        System => "system",
        Webhook => "webhook",
        Generation => "generation",
        Processing => "processing",
        Automation => "automation",
        Notification => "notification",
        Validation => "validation",
        Success => "success",
    }
);

/// An entry to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewError {
    pub severity: Severity,
    pub kind: ErrorType,
    pub message: String,
    pub details: Option<serde_json::Value>,
    pub source: Option<String>,
}

impl NewError {
    pub fn new(severity: Severity, kind: ErrorType, message: impl Into<String>) -> Self {
        Self {
            severity,
            kind,
            message: message.into(),
            details: None,
            source: None,
        }
    }
    pub fn success(message: impl Into<String>) -> Self {
        Self::new(Severity::Info, ErrorType::Success, message)
    }
    pub fn warning(kind: ErrorType, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, kind, message)
    }
    pub fn critical(kind: ErrorType, message: impl Into<String>) -> Self {
        Self::new(Severity::Critical, kind, message)
    }
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Entries with the same type, source and message are one problem.
    pub fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        for part in [
            self.kind.as_str(),
            self.source.as_deref().unwrap_or(""),
            &self.message,
        ] {
            hash.update(part.as_bytes());
            hash.update([0u8]);
        }
        hex::encode(&hash.finalize()[..16])
    }

    /// The stored form of a first occurrence at `now_ms`.
    pub fn into_entry(self, id: String, now_ms: i64, policy: &ErrorPolicy) -> ErrorEntry {
        let dismissible = self.severity != Severity::Critical;
        ErrorEntry {
            id,
            auto_dismiss_at: policy.ttl_ms(&self).map(|ttl| now_ms + ttl),
            severity: self.severity,
            kind: self.kind,
            message: self.message,
            details: self.details,
            source: self.source,
            created_at: now_ms,
            last_seen_at: now_ms,
            count: 1,
            dismissible,
            dismissed: false,
            dismissed_at: None,
            dismissed_by: None,
            dismiss_reason: None,
            reopened_count: 0,
        }
    }
}

/// A stored entry. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorEntry {
    pub id: String,
    pub severity: Severity,
    #[serde(rename = "type")]
    pub kind: ErrorType,
    pub message: String,
    #[serde(default)]
    pub details: Option<serde_json::Value>,
    #[serde(default)]
    pub source: Option<String>,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub count: u64,
    pub dismissible: bool,
    pub dismissed: bool,
    #[serde(default)]
    pub dismissed_at: Option<i64>,
    #[serde(default)]
    pub dismissed_by: Option<String>,
    #[serde(default)]
    pub dismiss_reason: Option<String>,
    #[serde(default)]
    pub auto_dismiss_at: Option<i64>,
    /// How many times the problem came back after being dismissed.
    #[serde(default)]
    pub reopened_count: u64,
}

/// A list request.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub severity: Option<Severity>,
    pub kind: Option<ErrorType>,
    pub include_dismissed: bool,
    pub limit: usize,
    /// Opaque cursor from a previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ErrorPage {
    pub errors: Vec<ErrorEntry>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DismissOutcome {
    Dismissed,
    NotFound,
    NotDismissible,
}

/// Counts kept up to date on every change, so reading them never scans entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorStats {
    pub total: u64,
    pub active: u64,
    pub dismissed: u64,
    pub by_severity: BTreeMap<String, u64>,
    pub by_type: BTreeMap<String, u64>,
    /// Active entries by (severity, type), for the `scenehook_errors_active` gauge.
    #[serde(skip)]
    pub by_severity_and_type: BTreeMap<(String, String), u64>,
}

/// Time-based behaviour, the same for both backends.
#[derive(Debug, Clone, Copy)]
pub struct ErrorPolicy {
    pub success_ttl_ms: i64,
    pub info_ttl_ms: i64,
    pub warning_ttl_ms: i64,
    pub retention_ms: i64,
    pub max_entries: u64,
    /// Success entries kept at most, within `max_entries`: successes evict the oldest success,
    /// never an error's entry.
    pub max_successes: u64,
}

impl ErrorPolicy {
    pub fn from_config(c: &crate::config::ErrorStoreConfig) -> Self {
        let ms = |secs: u64| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        Self {
            success_ttl_ms: ms(c.success_ttl_secs),
            info_ttl_ms: ms(c.info_ttl_secs),
            warning_ttl_ms: ms(c.warning_ttl_secs),
            retention_ms: ms(c.retention_secs),
            max_entries: c.max_entries.max(1),
            max_successes: c.max_successes,
        }
    }

    /// How long an entry stays active before it dismisses itself; errors and criticals never.
    pub fn ttl_ms(&self, entry: &NewError) -> Option<i64> {
        match (entry.kind, entry.severity) {
            (_, Severity::Critical | Severity::Error) => None,
            (ErrorType::Success, _) => Some(self.success_ttl_ms),
            (_, Severity::Info) => Some(self.info_ttl_ms),
            (_, Severity::Warning) => Some(self.warning_ttl_ms),
        }
    }
}

/// A new entry id: `err_<ms>_<random>`.
pub fn new_error_id(now_ms: i64) -> String {
    format!("err_{now_ms}_{}", crate::domain::ids::random_token(10))
}

/// Page cursors are `<score>:<id>`: entries sort by last-seen time, then id, newest first.
pub fn encode_cursor(score: i64, id: &str) -> String {
    format!("{score}:{id}")
}

pub fn decode_cursor(cursor: &str) -> Option<(i64, String)> {
    let (score, id) = cursor.split_once(':')?;
    Some((score.parse().ok()?, id.to_owned()))
}
