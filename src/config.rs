//! One typed [`Config`], loaded in layers and validated once at start-up.
//!
//! Layers, later ones winning: the defaults compiled into the binary (`config/default.toml`),
//! `default.toml` and `{APP_ENV}.toml` from the config directory (`config/` or
//! `$SCENEHOOK_CONFIG_DIR`), the environment names of the original design
//! (`VIDEO_WEBHOOK_SECRET`, `DATABASE_URL`, …), and finally `SCENEHOOK_<SECTION>__<KEY>` for
//! every other key. A value of the wrong shape stops start-up with an error naming the key.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, de};
use url::Url;

const BUILT_IN_DEFAULTS: &str = include_str!("../config/default.toml");

/// Minimum length of a raw webhook secret in production.
const MIN_SECRET_BYTES: usize = 32;
/// Minimum decoded length of a `whsec_` secret (the Standard Webhooks minimum).
const MIN_WHSEC_BYTES: usize = 24;

/// What a process loads the configuration for. Serving checks everything. The maintenance
/// commands (`scenehook migrate`, `scenehook backup`) touch only the database, so production's
/// webhook secrets and operator keys are not asked of them: a release job that migrates needs
/// `DATABASE_URL` and nothing the instances keep secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Serve,
    Maintain,
}

/// The whole configuration of one gateway instance.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// `development` or `production` (`APP_ENV`, alias `NODE_ENV`).
    pub env: String,
    pub bind_addr: SocketAddr,
    /// Public base URL of this gateway, used for callback URLs (`APP_URL`).
    pub app_url: Url,
    pub database_url: String,
    /// Empty: the in-process store. `redis://…`, `redis-cluster://…` or `redis-sentinel://…`
    /// (`rediss…` with TLS): shared by the fleet.
    pub redis_url: String,
    /// Prefix of every Redis key (inside the `{…}` hash tag), so deployments can share a Redis.
    pub redis_key_prefix: String,
    /// Certificates for a `rediss://` (TLS) Redis.
    #[serde(default)]
    pub redis_tls: RedisTlsConfig,
    /// HTTPS on `bind_addr`, with a certificate of the deployment's.
    #[serde(default)]
    pub tls: ServerTlsConfig,
    /// How often the secrets that came from files and can change while serving (the webhook
    /// secrets, the operator keys and the services' API keys) are read again.
    pub secret_files_reload_secs: u64,
    /// The `<NAME>_FILE` variables the secrets came from, as [`Config::load`] found them.
    #[serde(skip)]
    pub secret_files: Vec<SecretFile>,
    pub run_migrations: bool,
    /// `text` or `json` (`LOG_FORMAT`).
    pub log_format: String,
    pub shutdown_grace_secs: u64,
    pub max_body_bytes: usize,
    /// How long a request may take, its body included, before it is answered 408.
    pub request_timeout_secs: u64,
    /// How long a client may take to send a request's headers, or stay idle between requests,
    /// before its connection is closed.
    pub header_read_timeout_secs: u64,
    #[serde(deserialize_with = "comma_list")]
    pub cors_allowed_origins: Vec<String>,
    #[serde(deserialize_with = "comma_list")]
    pub trusted_proxies: Vec<IpNet>,
    #[serde(deserialize_with = "comma_list")]
    pub operator_api_keys: Vec<OperatorKey>,
    pub metrics_bind_addr: String,
    pub database: DatabaseConfig,
    pub webhooks: WebhookConfig,
    pub rate_limit: RateLimitConfig,
    pub pipeline: PipelineConfig,
    pub services: ServicesConfig,
    pub outbox: OutboxConfig,
    pub errors: ErrorStoreConfig,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseConfig {
    pub max_connections: u32,
    /// Ingestion writer tasks per instance (Postgres; SQLite always has one).
    pub ingest_writers: usize,
    /// The most webhook deliveries one ingestion transaction applies.
    pub ingest_batch_max: usize,
    pub acquire_timeout_ms: u64,
    /// SQLite: the WAL's size at which the checkpointer starts it over (MiB).
    pub sqlite_wal_max_mib: u64,
    pub delivery_retention_hours: u64,
    pub done_job_retention_hours: u64,
}

impl DatabaseConfig {
    pub fn delivery_retention(&self) -> Duration {
        Duration::from_secs(self.delivery_retention_hours.saturating_mul(3600))
    }

    pub fn done_job_retention(&self) -> Duration {
        Duration::from_secs(self.done_job_retention_hours.saturating_mul(3600))
    }
}

#[derive(Clone, Deserialize)]
pub struct WebhookConfig {
    #[serde(deserialize_with = "comma_list")]
    pub video_secrets: Vec<Secret>,
    #[serde(deserialize_with = "comma_list")]
    pub last_frame_secrets: Vec<Secret>,
    #[serde(deserialize_with = "comma_list")]
    pub stitch_secrets: Vec<Secret>,
    pub timestamp_tolerance_secs: u64,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("video_secrets", &self.video_secrets.len())
            .field("last_frame_secrets", &self.last_frame_secrets.len())
            .field("stitch_secrets", &self.stitch_secrets.len())
            .field("timestamp_tolerance_secs", &self.timestamp_tolerance_secs)
            .finish()
    }
}

/// TLS to Redis (`rediss://…`, `rediss-cluster://…`): the server's certificate must chain to
/// webpki's roots or to `ca_file`, and be issued for the host the URL (or, on a cluster, each
/// node's announced address) names; `cert_file` and `key_file`, given together, are the
/// gateway's client certificate for a Redis that asks for one. PEM files.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RedisTlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl RedisTlsConfig {
    fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }

    /// What [`crate::tls::client_config`] builds the connections' TLS from.
    pub fn settings(&self) -> crate::tls::TlsSettings {
        use crate::tls::Pem;
        crate::tls::TlsSettings {
            verify: crate::tls::Verify::ChainAndName,
            root_cert: self.ca_file.clone().map(Pem::File),
            client_cert: self.cert_file.clone().map(Pem::File),
            client_key: self.key_file.clone().map(Pem::File),
        }
    }
}

/// HTTPS on `bind_addr`: with `cert_file` (the PEM chain, leaf first) and `key_file` (its PEM
/// private key) set together, every connection there is TLS. The files are read again every
/// `reload_secs`, and a renewed certificate is served from then on, without a restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ServerTlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub reload_secs: u64,
}

impl Default for ServerTlsConfig {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            reload_secs: 60,
        }
    }
}

impl ServerTlsConfig {
    /// The certificate and key files, if HTTPS is on.
    pub fn files(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        Some((self.cert_file.as_deref()?, self.key_file.as_deref()?))
    }

    pub fn reload_interval(&self) -> Duration {
        Duration::from_secs(self.reload_secs)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RateLimitConfig {
    pub window_secs: u64,
    pub video_complete: u32,
    pub last_frame_complete: u32,
    pub stitch_complete: u32,
    pub fail_open: bool,
    pub redis_timeout_ms: u64,
    pub flood_guard_per_second: u64,
    pub flood_guard_burst: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PipelineConfig {
    pub max_scene_attempts: i32,
    pub max_extract_attempts: i32,
    pub max_stitch_attempts: i32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServicesConfig {
    pub video: ServiceConfig,
    pub last_frame: ServiceConfig,
    pub stitch: ServiceConfig,
    pub notification: ServiceConfig,
}

impl ServicesConfig {
    pub fn get(&self, service: crate::outbox::Service) -> &ServiceConfig {
        use crate::outbox::Service;
        match service {
            Service::Video => &self.video,
            Service::LastFrame => &self.last_frame,
            Service::Stitch => &self.stitch,
            Service::Notification => &self.notification,
        }
    }
}

#[derive(Clone, Deserialize)]
pub struct ServiceConfig {
    pub url: Url,
    pub path: String,
    pub api_key: Secret,
}

impl fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("url", &self.url.as_str())
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ServicesConfig {
    /// Points every service at one base URL (the fake services, in the demo and tests).
    pub fn point_all_at(&mut self, base: &Url) {
        for service in [
            &mut self.video,
            &mut self.last_frame,
            &mut self.stitch,
            &mut self.notification,
        ] {
            service.url = base.clone();
        }
    }
}

impl ServiceConfig {
    /// The full endpoint URL: the service's base URL joined with its path.
    pub fn endpoint(&self) -> String {
        format!(
            "{}/{}",
            self.url.as_str().trim_end_matches('/'),
            self.path.trim_start_matches('/')
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct OutboxConfig {
    /// Whether this instance runs the outbox worker.
    pub enabled: bool,
    pub poll_interval_ms: u64,
    pub lease_secs: u64,
    pub base_delay_ms: u64,
    pub max_delay_secs: u64,
    pub max_attempts: i32,
    pub concurrency_per_service: usize,
    pub request_timeout_ms: u64,
    pub inline_retries: u32,
    pub breaker_consecutive_failures: u32,
    pub breaker_open_min_ms: u64,
    pub breaker_open_max_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ErrorStoreConfig {
    pub success_ttl_secs: u64,
    pub info_ttl_secs: u64,
    pub warning_ttl_secs: u64,
    pub retention_secs: u64,
    pub cleanup_interval_secs: u64,
    pub max_entries: u64,
    pub max_successes: u64,
}

impl ErrorStoreConfig {
    /// How often the error store is cleaned and database retention runs (at least a second).
    pub fn cleanup_interval(&self) -> Duration {
        Duration::from_secs(self.cleanup_interval_secs.max(1))
    }
}

/// A secret value. Its `Debug` never shows the value, so it cannot reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self(d.deserialize_any(Scalar)?))
    }
}

/// What an operator key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// One entry of `OPERATOR_API_KEYS`: `key`, `name:key`, `name:key:rw` or `name:key:ro`.
#[derive(Clone, PartialEq, Eq)]
pub struct OperatorKey {
    pub name: String,
    pub key: Secret,
    pub access: Access,
}

impl fmt::Debug for OperatorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperatorKey({}, {:?})", self.name, self.access)
    }
}

impl FromStr for OperatorKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let (name, key, access) = match parts.as_slice() {
            [key] => ("operator", *key, Access::ReadWrite),
            [name, key] => (*name, *key, Access::ReadWrite),
            [name, key, "rw"] => (*name, *key, Access::ReadWrite),
            [name, key, "ro"] => (*name, *key, Access::ReadOnly),
            [name, _, other] => {
                return Err(format!(
                    "operator key `{name}` has access `{other}`; expected `rw` or `ro`"
                ));
            }
            _ => return Err("an operator key is `key`, `name:key` or `name:key:rw|ro`".into()),
        };
        if key.is_empty() || name.is_empty() {
            return Err("an operator key entry has an empty name or key".into());
        }
        Ok(Self {
            name: name.to_owned(),
            key: Secret::new(key),
            access,
        })
    }
}

/// Accepts a scalar of any type as its string form: figment reads `PORT=3000` as a number and
/// a secret may well be all digits.
struct Scalar;

impl de::Visitor<'_> for Scalar {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
}

/// A list given either as a TOML array or, from the environment, as one comma-separated string.
fn comma_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<RawItem>),
        One(RawItem),
    }
    struct RawItem(String);
    impl<'de> Deserialize<'de> for RawItem {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Scalar).map(RawItem)
        }
    }
    let items: Vec<String> = match Raw::deserialize(d)? {
        Raw::List(items) => items.into_iter().map(|i| i.0).collect(),
        Raw::One(item) => item.0.split(',').map(str::to_owned).collect(),
    };
    items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<T>()
                .map_err(|e| de::Error::custom(format!("`{}`: {e}", redact(s))))
        })
        .collect()
}

/// Values in error messages may be secrets: show only their length.
fn redact(value: &str) -> String {
    format!("<{} characters>", value.len())
}

/// Why the configuration was refused; each problem is one line naming the variable.
#[derive(Debug)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "config: {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The original design's environment names, mapped to config keys.
const ENV_NAMES: &[(&str, &str)] = &[
    ("VIDEO_WEBHOOK_SECRET", "webhooks.video_secrets"),
    ("LAST_FRAME_WEBHOOK_SECRET", "webhooks.last_frame_secrets"),
    ("STITCH_WEBHOOK_SECRET", "webhooks.stitch_secrets"),
    ("VIDEO_SERVICE_URL", "services.video.url"),
    ("VIDEO_API_KEY", "services.video.api_key"),
    ("LAST_FRAME_SERVICE_URL", "services.last_frame.url"),
    ("LAST_FRAME_API_KEY", "services.last_frame.api_key"),
    ("STITCH_SERVICE_URL", "services.stitch.url"),
    ("STITCH_API_KEY", "services.stitch.api_key"),
    ("NOTIFICATION_SERVICE_URL", "services.notification.url"),
    ("NOTIFICATION_API_KEY", "services.notification.api_key"),
    ("APP_URL", "app_url"),
    ("APP_ENV", "env"),
    ("DATABASE_URL", "database_url"),
    ("REDIS_URL", "redis_url"),
    ("BIND_ADDR", "bind_addr"),
    ("OPERATOR_API_KEYS", "operator_api_keys"),
    ("CORS_ALLOWED_ORIGINS", "cors_allowed_origins"),
    ("TRUSTED_PROXIES", "trusted_proxies"),
    ("LOG_FORMAT", "log_format"),
];

/// Older names, used only when the primary name is absent.
const ENV_ALIASES: &[(&str, &str)] = &[("NEXT_PUBLIC_APP_URL", "app_url"), ("NODE_ENV", "env")];

fn env_provider(names: &'static [(&'static str, &'static str)]) -> Env {
    Env::raw().filter_map(move |key| {
        names
            .iter()
            .find(|(name, _)| key.as_str().eq_ignore_ascii_case(name))
            .map(|(_, path)| (*path).into())
    })
}

/// The variables whose value may come from a file instead, named by `<NAME>_FILE` (Docker and
/// Kubernetes mount secrets as files): the secrets, and the URLs that may hold a password.
const FILE_VARIABLES: &[&str] = &[
    "VIDEO_WEBHOOK_SECRET",
    "LAST_FRAME_WEBHOOK_SECRET",
    "STITCH_WEBHOOK_SECRET",
    "VIDEO_API_KEY",
    "LAST_FRAME_API_KEY",
    "STITCH_API_KEY",
    "NOTIFICATION_API_KEY",
    "OPERATOR_API_KEYS",
    "DATABASE_URL",
    "REDIS_URL",
];

/// The file variables read again while serving ([`Config::with_secret_files_reread`]); the
/// others (`DATABASE_URL`, `REDIS_URL`) are read at start only.
const RELOADABLE_FILE_VARIABLES: &[&str] = &[
    "VIDEO_WEBHOOK_SECRET",
    "LAST_FRAME_WEBHOOK_SECRET",
    "STITCH_WEBHOOK_SECRET",
    "OPERATOR_API_KEYS",
    "VIDEO_API_KEY",
    "LAST_FRAME_API_KEY",
    "STITCH_API_KEY",
    "NOTIFICATION_API_KEY",
];

/// A setting read from a file: `variable`'s value came from `path` (`<variable>_FILE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    pub variable: &'static str,
    pub path: PathBuf,
}

/// A secret file's text, less its final line break.
fn read_secret_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value = text.strip_suffix('\n').unwrap_or(&text);
    Ok(value.strip_suffix('\r').unwrap_or(value).to_owned())
}

/// For each `<NAME>_FILE` set, the file's text (less its final line break) as `NAME`'s value;
/// and which files they were. A file that cannot be read, or a variable set both ways, is a
/// problem naming the variable; the file's text never appears in one.
fn merge_secret_files(mut figment: Figment) -> Result<(Figment, Vec<SecretFile>), ConfigError> {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    for name in FILE_VARIABLES {
        let file_variable = format!("{name}_FILE");
        let Some(path) = std::env::var_os(&file_variable).map(PathBuf::from) else {
            continue;
        };
        let key = ENV_NAMES
            .iter()
            .find(|(env_name, _)| env_name == name)
            .map(|(_, key)| *key)
            .expect("every file variable has a key");
        // `SCENEHOOK_<KEY>` overrides the file's value at start but not when it is read again:
        // one source or the other.
        let override_variable = format!("SCENEHOOK_{}", key.replace('.', "__").to_uppercase());
        if let Some(other) = [*name, override_variable.as_str()]
            .into_iter()
            .find(|other| std::env::var_os(other).is_some())
        {
            problems.push(format!("{other} and {file_variable} are both set: set one"));
            continue;
        }
        match read_secret_file(&path) {
            Ok(value) => {
                figment = figment.merge((key, value));
                files.push(SecretFile {
                    variable: name,
                    path,
                });
            }
            Err(e) => problems.push(format!("{file_variable}: {e}")),
        }
    }
    if problems.is_empty() {
        Ok((figment, files))
    } else {
        Err(ConfigError(problems))
    }
}

impl Config {
    /// Loads from the process environment and the config directory, then validates what
    /// `purpose` needs.
    pub fn load(purpose: Purpose) -> Result<Self, ConfigError> {
        let dir = std::env::var_os("SCENEHOOK_CONFIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("config"));
        let env_name = std::env::var("APP_ENV")
            .or_else(|_| std::env::var("NODE_ENV"))
            .unwrap_or_default();
        let mut figment = Figment::from(Toml::string(BUILT_IN_DEFAULTS))
            .merge(Toml::file(dir.join("default.toml")));
        if !env_name.is_empty() {
            figment = figment.merge(Toml::file(dir.join(format!("{env_name}.toml"))));
        }
        figment = figment
            .merge(env_provider(ENV_ALIASES))
            .merge(env_provider(ENV_NAMES));
        let (with_files, secret_files) = merge_secret_files(figment)?;
        figment = with_files;
        // `PORT` alone sets the port of the default bind address.
        if std::env::var_os("BIND_ADDR").is_none()
            && let Ok(port) = std::env::var("PORT")
        {
            figment = figment.merge(("bind_addr", format!("0.0.0.0:{port}")));
        }
        figment = figment.merge(Env::prefixed("SCENEHOOK_").split("__"));
        let mut config = Self::from_figment(figment, purpose)?;
        config.secret_files = secret_files;
        Ok(config)
    }

    /// This configuration with the secrets that came from files and can change while serving
    /// (the webhook secrets, the operator keys and the services' API keys) read from them
    /// again, checked as at start:
    /// a file that cannot be read, a value that does not parse, or one production refuses is a
    /// problem naming its variable, never the value.
    pub fn with_secret_files_reread(&self) -> Result<Config, ConfigError> {
        use serde::de::value::{Error, StrDeserializer};
        fn list<T>(text: &str) -> Result<Vec<T>, String>
        where
            T: FromStr,
            T::Err: fmt::Display,
        {
            comma_list(StrDeserializer::<Error>::new(text)).map_err(|e| e.to_string())
        }
        let mut config = self.clone();
        let mut problems = Vec::new();
        for file in self.reloadable_secret_files() {
            let c = &mut config;
            let reread = read_secret_file(&file.path).and_then(|text| {
                match file.variable {
                    "VIDEO_WEBHOOK_SECRET" => c.webhooks.video_secrets = list(&text)?,
                    "LAST_FRAME_WEBHOOK_SECRET" => c.webhooks.last_frame_secrets = list(&text)?,
                    "STITCH_WEBHOOK_SECRET" => c.webhooks.stitch_secrets = list(&text)?,
                    "OPERATOR_API_KEYS" => c.operator_api_keys = list(&text)?,
                    "VIDEO_API_KEY" => c.services.video.api_key = Secret::new(text),
                    "LAST_FRAME_API_KEY" => c.services.last_frame.api_key = Secret::new(text),
                    "STITCH_API_KEY" => c.services.stitch.api_key = Secret::new(text),
                    "NOTIFICATION_API_KEY" => c.services.notification.api_key = Secret::new(text),
                    other => unreachable!("{other} is not read again"),
                }
                Ok(())
            });
            if let Err(e) = reread {
                problems.push(format!("{}_FILE: {e}", file.variable));
            }
        }
        problems.extend(config.serving_secret_problems());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(problems))
        }
    }

    /// The secret files [`Config::with_secret_files_reread`] reads again.
    pub fn reloadable_secret_files(&self) -> impl Iterator<Item = &SecretFile> {
        self.secret_files
            .iter()
            .filter(|file| RELOADABLE_FILE_VARIABLES.contains(&file.variable))
    }

    /// The built-in defaults alone (development), for tests and tools.
    pub fn defaults() -> Self {
        Self::from_figment(
            Figment::from(Toml::string(BUILT_IN_DEFAULTS)),
            Purpose::Serve,
        )
        .expect("the built-in defaults are valid")
    }

    fn from_figment(figment: Figment, purpose: Purpose) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(|errors| {
            ConfigError(
                errors
                    .into_iter()
                    .map(|e| {
                        let key = e.path.join(".");
                        let mut e = e;
                        e.path.clear();
                        e.profile = None;
                        e.metadata = None;
                        if key.is_empty() {
                            e.to_string()
                        } else {
                            format!("{key}: {e}")
                        }
                    })
                    .collect(),
            )
        })?;
        config.validate(purpose)?;
        Ok(config)
    }

    pub fn is_production(&self) -> bool {
        self.env.eq_ignore_ascii_case("production")
    }

    /// Checks what serde cannot; in production, to serve, also that no secret is missing, weak
    /// or a placeholder. Each problem names the environment variable that fixes it.
    pub fn validate(&self, purpose: Purpose) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.outbox.max_attempts < 1 {
            problems.push("SCENEHOOK_OUTBOX__MAX_ATTEMPTS must be at least 1".to_owned());
        }
        let d = &self.database;
        if !(1..=1000).contains(&d.max_connections) {
            problems
                .push("SCENEHOOK_DATABASE__MAX_CONNECTIONS must be between 1 and 1000".to_owned());
        }
        for (var, millis) in [
            (
                "SCENEHOOK_DATABASE__ACQUIRE_TIMEOUT_MS",
                d.acquire_timeout_ms,
            ),
            (
                "SCENEHOOK_OUTBOX__REQUEST_TIMEOUT_MS",
                self.outbox.request_timeout_ms,
            ),
            (
                "SCENEHOOK_RATE_LIMIT__REDIS_TIMEOUT_MS",
                self.rate_limit.redis_timeout_ms,
            ),
        ] {
            // Zero would time every call out at once.
            if millis == 0 {
                problems.push(format!("{var} must be at least 1"));
            }
        }
        // A job whose lease ends while its call is still out is claimed again by another lane
        // (or instance) and sent twice.
        let longest_attempt = crate::outbox::client::longest_attempt(&self.outbox);
        if Duration::from_secs(self.outbox.lease_secs) <= longest_attempt {
            problems.push(format!(
                "SCENEHOOK_OUTBOX__LEASE_SECS ({} s) must exceed a job's longest attempt, \
                 {:.1} s: request_timeout_ms for each of inline_retries + 1 tries, and up to \
                 {} s before each retry",
                self.outbox.lease_secs,
                longest_attempt.as_secs_f64(),
                crate::outbox::client::MAX_RETRY_DELAY.as_secs()
            ));
        }
        // Each writer holds a connection of its own (a pool beside the main one).
        if !(1..=64).contains(&d.ingest_writers) {
            problems.push("SCENEHOOK_DATABASE__INGEST_WRITERS must be between 1 and 64".to_owned());
        }
        // Bounded so that a batch's multi-row statements stay under the drivers' bind limits.
        if !(1..=1000).contains(&d.ingest_batch_max) {
            problems
                .push("SCENEHOOK_DATABASE__INGEST_BATCH_MAX must be between 1 and 1000".to_owned());
        }
        // Ten years at most; deliveries at least an hour, as their rows are the idempotency
        // window (with none, every redelivery would be taken as new).
        const TEN_YEARS_IN_HOURS: u64 = 10 * 366 * 24;
        if !(1..=TEN_YEARS_IN_HOURS).contains(&d.delivery_retention_hours) {
            problems.push(format!(
                "SCENEHOOK_DATABASE__DELIVERY_RETENTION_HOURS must be between 1 and \
                 {TEN_YEARS_IN_HOURS}"
            ));
        }
        if d.done_job_retention_hours > TEN_YEARS_IN_HOURS {
            problems.push(format!(
                "SCENEHOOK_DATABASE__DONE_JOB_RETENTION_HOURS must be at most {TEN_YEARS_IN_HOURS}"
            ));
        }
        if !(1..=4096).contains(&d.sqlite_wal_max_mib) {
            problems.push(
                "SCENEHOOK_DATABASE__SQLITE_WAL_MAX_MIB must be between 1 and 4096".to_owned(),
            );
        }
        if !(1..=3600).contains(&self.request_timeout_secs) {
            problems.push("SCENEHOOK_REQUEST_TIMEOUT_SECS must be between 1 and 3600".to_owned());
        }
        if !(1..=3600).contains(&self.header_read_timeout_secs) {
            problems
                .push("SCENEHOOK_HEADER_READ_TIMEOUT_SECS must be between 1 and 3600".to_owned());
        }
        if self.rate_limit.window_secs == 0 {
            problems.push("SCENEHOOK_RATE_LIMIT__WINDOW_SECS must be at least 1".to_owned());
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            problems.push(format!(
                "LOG_FORMAT is `{}`; expected `text` or `json`",
                self.log_format
            ));
        }
        if !(self.database_url.starts_with("sqlite:")
            || self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            problems
                .push("DATABASE_URL must start with sqlite:, postgres:// or postgresql://".into());
        } else if self.database_url.starts_with("sqlite:")
            && crate::db::sqlite_file(&self.database_url).is_none()
        {
            problems.push(
                "DATABASE_URL names an in-memory SQLite database, which loses every \
                 acknowledged webhook at restart: name a file"
                    .into(),
            );
        }
        if !self.redis_url.is_empty() && Url::parse(&self.redis_url).is_err() {
            problems.push("REDIS_URL is not a valid URL".to_owned());
        }
        let tls = &self.redis_tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            problems.push(
                "SCENEHOOK_REDIS_TLS__CERT_FILE and SCENEHOOK_REDIS_TLS__KEY_FILE must be set \
                 together"
                    .to_owned(),
            );
        }
        if !tls.is_empty() && crate::store::redis::without_tls(&self.redis_url).is_none() {
            problems.push(
                "SCENEHOOK_REDIS_TLS__* is set but REDIS_URL does not use TLS: use rediss:// \
                 or rediss-cluster://"
                    .to_owned(),
            );
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            problems.push(
                "SCENEHOOK_TLS__CERT_FILE and SCENEHOOK_TLS__KEY_FILE must be set together"
                    .to_owned(),
            );
        }
        if !(1..=86_400).contains(&self.tls.reload_secs) {
            problems.push("SCENEHOOK_TLS__RELOAD_SECS must be between 1 and 86400".to_owned());
        }
        if !self.metrics_bind_addr.is_empty()
            && self.metrics_bind_addr.parse::<SocketAddr>().is_err()
        {
            problems.push("SCENEHOOK_METRICS_BIND_ADDR is not a socket address".to_owned());
        }
        if !(1..=86_400).contains(&self.secret_files_reload_secs) {
            problems
                .push("SCENEHOOK_SECRET_FILES_RELOAD_SECS must be between 1 and 86400".to_owned());
        }
        if purpose == Purpose::Serve {
            problems.extend(self.serving_secret_problems());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems))
        }
    }

    /// What production refuses to serve with: weak webhook secrets, no operator key.
    fn serving_secret_problems(&self) -> Vec<String> {
        if !self.is_production() {
            return Vec::new();
        }
        let mut problems = self.secret_problems();
        if self.operator_api_keys.is_empty() {
            problems.push(
                "OPERATOR_API_KEYS is empty: production needs at least one operator key".to_owned(),
            );
        }
        problems
    }

    /// One line per webhook secret that production would refuse, naming its variable.
    fn secret_problems(&self) -> Vec<String> {
        [
            ("VIDEO_WEBHOOK_SECRET", &self.webhooks.video_secrets),
            (
                "LAST_FRAME_WEBHOOK_SECRET",
                &self.webhooks.last_frame_secrets,
            ),
            ("STITCH_WEBHOOK_SECRET", &self.webhooks.stitch_secrets),
        ]
        .into_iter()
        .filter_map(|(var, secrets)| {
            production_secret_problem(secrets).map(|problem| format!("{var} {problem}"))
        })
        .collect()
    }

    /// Problems that refuse production but only warn in development.
    pub fn development_warnings(&self) -> Vec<String> {
        let mut warnings = self.secret_problems();
        if self.operator_api_keys.is_empty() {
            warnings.push(
                "OPERATOR_API_KEYS is empty: /api/v1 answers loopback clients only".to_owned(),
            );
        }
        warnings
    }

    /// Settings that work but are likely wrong, in any environment; logged at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.tls.files().is_some() && self.app_url.scheme() == "http" {
            warnings.push(
                "APP_URL is http:// but the gateway serves HTTPS: services given callback URLs \
                 from it would call back in plain HTTP, which it refuses"
                    .to_owned(),
            );
        }
        warnings
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }
}

fn production_secret_problem(secrets: &[Secret]) -> Option<String> {
    if secrets.is_empty() {
        return Some("is missing".to_owned());
    }
    for secret in secrets {
        let value = secret.expose();
        if is_placeholder(value) {
            return Some("is still a placeholder value".to_owned());
        }
        match crate::signature::standard_webhooks_key(value) {
            Some(Ok(key)) if key.len() < MIN_WHSEC_BYTES => {
                return Some(format!(
                    "is too short: a whsec_ secret needs at least {MIN_WHSEC_BYTES} decoded bytes"
                ));
            }
            Some(Err(())) => return Some("has a whsec_ prefix but is not valid base64".into()),
            Some(Ok(_)) => {}
            None if value.len() < MIN_SECRET_BYTES => {
                return Some(format!(
                    "is too short: at least {MIN_SECRET_BYTES} bytes are required"
                ));
            }
            None => {}
        }
    }
    None
}

fn is_placeholder(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    lower.starts_with("your-")
        || lower.starts_with("dev-")
        || ["placeholder", "change-me", "changeme", "not-for-production"]
            .iter()
            .any(|marker| lower.contains(marker))
}

#[cfg(test)]
// figment::Jail returns its own large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    fn with_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        loaded_for(Purpose::Serve, vars)
    }

    fn loaded_for(purpose: Purpose, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut loaded = None;
        figment::Jail::expect_with(|jail| {
            for (k, v) in vars {
                jail.set_env(k, v);
            }
            loaded = Some(Config::load(purpose));
            Ok(())
        });
        loaded.expect("the jail ran")
    }

    #[test]
    fn defaults_load_in_development() {
        let config = Config::defaults();
        assert!(!config.is_production());
        assert_eq!(config.rate_limit.video_complete, 100);
        assert_eq!(config.webhooks.video_secrets.len(), 1);
        assert!(!config.development_warnings().is_empty());
    }

    #[test]
    fn original_env_names_override_and_split_on_commas() {
        let config = with_env(&[
            ("VIDEO_WEBHOOK_SECRET", "new-secret,old-secret"),
            ("NEXT_PUBLIC_APP_URL", "https://alias.example.com"),
            ("PORT", "8080"),
            ("OPERATOR_API_KEYS", "alice:k1:rw,bob:k2:ro,bare"),
            ("SCENEHOOK_RATE_LIMIT__VIDEO_COMPLETE", "7"),
        ])
        .unwrap();
        let secrets: Vec<_> = config
            .webhooks
            .video_secrets
            .iter()
            .map(Secret::expose)
            .collect();
        assert_eq!(secrets, ["new-secret", "old-secret"]);
        assert_eq!(config.app_url.as_str(), "https://alias.example.com/");
        assert_eq!(config.bind_addr.port(), 8080);
        assert_eq!(config.rate_limit.video_complete, 7);
        let keys = &config.operator_api_keys;
        assert_eq!(
            (keys[0].name.as_str(), keys[0].access),
            ("alice", Access::ReadWrite)
        );
        assert_eq!(
            (keys[1].name.as_str(), keys[1].access),
            ("bob", Access::ReadOnly)
        );
        assert_eq!(
            (keys[2].name.as_str(), keys[2].access),
            ("operator", Access::ReadWrite)
        );
    }

    #[test]
    fn app_url_wins_over_its_alias() {
        let config = with_env(&[
            ("NEXT_PUBLIC_APP_URL", "https://alias.example.com"),
            ("APP_URL", "https://primary.example.com"),
        ])
        .unwrap();
        assert_eq!(config.app_url.host_str(), Some("primary.example.com"));
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = with_env(&[("BIND_ADDR", "not-an-address")]).unwrap_err();
        assert!(err.to_string().contains("bind_addr"), "{err}");
        let err = with_env(&[("LAST_FRAME_SERVICE_URL", "::nope")]).unwrap_err();
        assert!(err.to_string().contains("services.last_frame.url"), "{err}");
        let err = with_env(&[("OPERATOR_API_KEYS", "a:b:admin")]).unwrap_err();
        assert!(err.to_string().contains("operator_api_keys"), "{err}");
    }

    /// Each of `values` for the environment variable `var` is refused, naming `var`.
    fn refused(var: &str, values: &[&str]) {
        for value in values {
            let err = with_env(&[(var, value)]).unwrap_err();
            assert!(err.to_string().contains(var), "{var}={value}: {err}");
        }
    }

    #[test]
    fn ingestion_writers_are_bounded_on_their_own() {
        refused("SCENEHOOK_DATABASE__INGEST_WRITERS", &["0", "65"]);
        // Their connections are a pool of their own, not taken from the main one.
        assert!(
            with_env(&[
                ("SCENEHOOK_DATABASE__INGEST_WRITERS", "12"),
                ("SCENEHOOK_DATABASE__MAX_CONNECTIONS", "4"),
            ])
            .is_ok()
        );
    }

    #[test]
    fn the_pool_and_the_timeouts_of_calls_are_bounded() {
        refused("SCENEHOOK_DATABASE__MAX_CONNECTIONS", &["0", "1001"]);
        refused("SCENEHOOK_DATABASE__ACQUIRE_TIMEOUT_MS", &["0"]);
        refused("SCENEHOOK_OUTBOX__REQUEST_TIMEOUT_MS", &["0"]);
        refused("SCENEHOOK_RATE_LIMIT__REDIS_TIMEOUT_MS", &["0"]);
    }

    #[test]
    fn a_job_lease_outlasts_its_longest_attempt() {
        // The defaults: two tries of 10 s and up to 2 s between them, against 30 s.
        let defaults = Config::defaults();
        assert_eq!(
            crate::outbox::client::longest_attempt(&defaults.outbox),
            Duration::from_secs(22)
        );
        refused("SCENEHOOK_OUTBOX__LEASE_SECS", &["0", "22"]);
        assert!(with_env(&[("SCENEHOOK_OUTBOX__LEASE_SECS", "23")]).is_ok());
        // Longer calls need a longer lease.
        let err = with_env(&[("SCENEHOOK_OUTBOX__REQUEST_TIMEOUT_MS", "20000")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("SCENEHOOK_OUTBOX__LEASE_SECS (30 s)")
                && err.to_string().contains("42.0 s"),
            "{err}"
        );
        assert!(
            with_env(&[
                ("SCENEHOOK_OUTBOX__REQUEST_TIMEOUT_MS", "20000"),
                ("SCENEHOOK_OUTBOX__INLINE_RETRIES", "0"),
            ])
            .is_ok()
        );
    }

    #[test]
    fn the_request_timeouts_are_bounded() {
        refused("SCENEHOOK_REQUEST_TIMEOUT_SECS", &["0", "3601"]);
        refused("SCENEHOOK_HEADER_READ_TIMEOUT_SECS", &["0", "3601"]);
        let config = with_env(&[("SCENEHOOK_REQUEST_TIMEOUT_SECS", "5")]).unwrap();
        assert_eq!(config.request_timeout(), Duration::from_secs(5));
    }

    #[test]
    fn retention_is_bounded() {
        refused(
            "SCENEHOOK_DATABASE__DELIVERY_RETENTION_HOURS",
            &["0", "87841", "18446744073709551615"],
        );
        refused("SCENEHOOK_DATABASE__DONE_JOB_RETENTION_HOURS", &["87841"]);
        let config = with_env(&[("SCENEHOOK_DATABASE__DONE_JOB_RETENTION_HOURS", "0")]).unwrap();
        assert_eq!(config.database.done_job_retention_hours, 0);
    }

    #[test]
    fn the_sqlite_wal_bound_is_checked() {
        refused("SCENEHOOK_DATABASE__SQLITE_WAL_MAX_MIB", &["0", "4097"]);
        let config = with_env(&[("SCENEHOOK_DATABASE__SQLITE_WAL_MAX_MIB", "16")]).unwrap();
        assert_eq!(config.database.sqlite_wal_max_mib, 16);
    }

    #[test]
    fn an_in_memory_sqlite_database_is_refused() {
        for url in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://x.db?mode=memory",
        ] {
            let err = with_env(&[("DATABASE_URL", url)]).unwrap_err();
            assert!(err.to_string().contains("in-memory"), "{url}: {err}");
        }
        assert!(with_env(&[("DATABASE_URL", "sqlite://data/x.db?mode=rwc")]).is_ok());
    }

    #[test]
    fn production_refuses_placeholders_short_secrets_and_no_operator_keys() {
        let err = with_env(&[
            ("NODE_ENV", "production"),
            ("VIDEO_WEBHOOK_SECRET", "your-video-webhook-secret"),
            ("LAST_FRAME_WEBHOOK_SECRET", "0123456789"),
            (
                "STITCH_WEBHOOK_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
        ])
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("VIDEO_WEBHOOK_SECRET is still a placeholder"),
            "{text}"
        );
        assert!(
            text.contains("LAST_FRAME_WEBHOOK_SECRET is too short"),
            "{text}"
        );
        assert!(!text.contains("STITCH_WEBHOOK_SECRET"), "{text}");
        assert!(text.contains("OPERATOR_API_KEYS"), "{text}");
        assert!(!text.contains("0123456789"), "secret leaked: {text}");
    }

    #[test]
    fn maintenance_in_production_needs_no_secrets_but_valid_settings() {
        let production = ("APP_ENV", "production");
        let config = loaded_for(Purpose::Maintain, &[production]).unwrap();
        assert!(config.is_production());
        assert!(
            with_env(&[production]).is_err(),
            "serving needs the secrets"
        );
        let err = loaded_for(
            Purpose::Maintain,
            &[production, ("SCENEHOOK_DATABASE__MAX_CONNECTIONS", "0")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("MAX_CONNECTIONS"), "{err}");
    }

    #[test]
    fn redis_certificates_need_a_tls_url_and_come_in_pairs() {
        let ca = ("SCENEHOOK_REDIS_TLS__CA_FILE", "/etc/ca.pem");
        let err = with_env(&[("REDIS_URL", "redis://cache:6379"), ca]).unwrap_err();
        assert!(err.to_string().contains("does not use TLS"), "{err}");
        assert!(with_env(&[("REDIS_URL", "rediss://cache:6380"), ca]).is_ok());
        let err = with_env(&[
            ("REDIS_URL", "rediss://cache:6380"),
            ("SCENEHOOK_REDIS_TLS__CERT_FILE", "/etc/client.pem"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("set together"), "{err}");
        let config = with_env(&[
            ("REDIS_URL", "rediss-cluster://cache:7000"),
            ("SCENEHOOK_REDIS_TLS__CERT_FILE", "/etc/client.pem"),
            ("SCENEHOOK_REDIS_TLS__KEY_FILE", "/etc/client.key"),
        ])
        .unwrap();
        assert_eq!(
            config.redis_tls.key_file.as_deref(),
            Some(std::path::Path::new("/etc/client.key"))
        );
    }

    #[test]
    fn https_needs_its_certificate_and_key_together() {
        let err = with_env(&[("SCENEHOOK_TLS__CERT_FILE", "/etc/tls/chain.pem")]).unwrap_err();
        assert!(err.to_string().contains("set together"), "{err}");
        let err = with_env(&[("SCENEHOOK_TLS__RELOAD_SECS", "0")]).unwrap_err();
        assert!(err.to_string().contains("RELOAD_SECS"), "{err}");
        let config = with_env(&[
            ("SCENEHOOK_TLS__CERT_FILE", "/etc/tls/chain.pem"),
            ("SCENEHOOK_TLS__KEY_FILE", "/etc/tls/key.pem"),
        ])
        .unwrap();
        let (cert, key) = config.tls.files().unwrap();
        assert_eq!(
            (cert.to_str(), key.to_str()),
            (Some("/etc/tls/chain.pem"), Some("/etc/tls/key.pem"))
        );
        assert_eq!(config.tls.reload_interval(), Duration::from_secs(60));
        assert!(with_env(&[]).unwrap().tls.files().is_none());
        assert!(config.warnings()[0].contains("APP_URL is http://"));
        let config = with_env(&[
            ("SCENEHOOK_TLS__CERT_FILE", "/etc/tls/chain.pem"),
            ("SCENEHOOK_TLS__KEY_FILE", "/etc/tls/key.pem"),
            ("APP_URL", "https://hooks.example.com"),
        ])
        .unwrap();
        assert!(config.warnings().is_empty());
    }

    #[test]
    fn only_the_secrets_read_while_serving_are_read_again() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("video.secret", "from-a-file-0123456789")?;
            jail.create_file("database.url", "sqlite://data/from-a-file.db?mode=rwc")?;
            jail.set_env("VIDEO_WEBHOOK_SECRET_FILE", "video.secret");
            jail.set_env("DATABASE_URL_FILE", "database.url");
            let config = Config::load(Purpose::Serve).unwrap();
            assert_eq!(config.secret_files.len(), 2);
            let reloadable: Vec<_> = config
                .reloadable_secret_files()
                .map(|f| f.variable)
                .collect();
            assert_eq!(reloadable, ["VIDEO_WEBHOOK_SECRET"]);
            // A file read at start only is not read again: its going away changes nothing.
            std::fs::remove_file("database.url").unwrap();
            assert!(config.with_secret_files_reread().is_ok());
            Ok(())
        });
    }

    #[test]
    fn secrets_may_come_from_files() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("video.secret", "from-a-file-0123456789\n")?;
            jail.create_file("keys", "ops:file-key:rw,viewer:other:ro\r\n")?;
            jail.set_env("VIDEO_WEBHOOK_SECRET_FILE", "video.secret");
            jail.set_env("OPERATOR_API_KEYS_FILE", "keys");
            let config = Config::load(Purpose::Serve).unwrap();
            let video: Vec<_> = config
                .webhooks
                .video_secrets
                .iter()
                .map(|s| s.expose().to_owned())
                .collect();
            assert_eq!(video, ["from-a-file-0123456789"]);
            assert_eq!(config.operator_api_keys.len(), 2);
            let variables: Vec<_> = config.secret_files.iter().map(|f| f.variable).collect();
            assert_eq!(variables, ["VIDEO_WEBHOOK_SECRET", "OPERATOR_API_KEYS"]);

            // Read again: the new values; a malformed one is a problem naming its variable.
            jail.create_file("video.secret", "rotated,from-a-file-0123456789")?;
            let reread = config.with_secret_files_reread().unwrap();
            assert_eq!(reread.webhooks.video_secrets.len(), 2);
            jail.create_file("keys", "a:b:c:d")?;
            let text = config.with_secret_files_reread().unwrap_err().to_string();
            assert!(
                text.starts_with("config: OPERATOR_API_KEYS_FILE: "),
                "{text}"
            );
            assert!(!text.contains("rotated"), "a secret leaked: {text}");

            // The file and `SCENEHOOK_<KEY>`, which would win at start only, are one too many.
            jail.set_env("SCENEHOOK_OPERATOR_API_KEYS", "ops:override:rw");
            let text = Config::load(Purpose::Serve).unwrap_err().to_string();
            assert!(
                text.contains(
                    "SCENEHOOK_OPERATOR_API_KEYS and OPERATOR_API_KEYS_FILE are both set"
                ),
                "{text}"
            );

            jail.set_env("VIDEO_WEBHOOK_SECRET", "also-set-directly");
            jail.set_env("STITCH_API_KEY_FILE", "no-such-file");
            let text = Config::load(Purpose::Serve).unwrap_err().to_string();
            assert!(
                text.contains("VIDEO_WEBHOOK_SECRET and VIDEO_WEBHOOK_SECRET_FILE are both set"),
                "{text}"
            );
            assert!(
                text.contains("STITCH_API_KEY_FILE: cannot read no-such-file"),
                "{text}"
            );
            assert!(!text.contains("from-a-file"), "a secret leaked: {text}");
            Ok(())
        });
    }

    #[test]
    fn production_accepts_strong_secrets() {
        let strong = "k".repeat(40);
        let config = with_env(&[
            ("APP_ENV", "production"),
            ("VIDEO_WEBHOOK_SECRET", &strong),
            ("LAST_FRAME_WEBHOOK_SECRET", &strong),
            ("STITCH_WEBHOOK_SECRET", &strong),
            ("OPERATOR_API_KEYS", "ops:abc:rw"),
        ])
        .unwrap();
        assert!(config.is_production());
    }
}
