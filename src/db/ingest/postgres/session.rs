//! The writers' own tokio-postgres connections: opened from the gateway's `DATABASE_URL` as
//! sqlx reads it, each with the ingestion statements prepared on it, and opened again when
//! lost.
//!
//! sqlx, which every other connection of the gateway goes through, resolves the URL: its
//! parameters, the `PG*` environment variables and the password file. The settings it keeps
//! to itself (the password, the certificate files) are read back from the URL it would
//! connect with, so that nothing here interprets a setting sqlx reads differently.

use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use sea_orm::{
    ConnAcquireErr, DbErr, RuntimeErr,
    sqlx::{
        ConnectOptions as _,
        postgres::{PgConnectOptions, PgSslMode},
    },
};
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::{Client, Statement, config::SslMode};

use super::tls::{Pem, RustlsConnect, TlsSettings, Verify};

/// Every writer connection plans its statements once. Postgres plans a prepared statement
/// again at every execution while it estimates that plans made for the values bound come out
/// cheaper than one made for any, and with arrays bound they always do (it knows their
/// length): planning then cost the ingestion statements more than running them. Their generic
/// plans reach every row through an index (a test checks each), whatever the batch size.
const SESSION_OPTIONS: &str = "-c plan_cache_mode=force_generic_plan";

/// A connection and the ingestion statements prepared on it.
pub struct Session {
    pub client: Client,
    pub statements: Statements,
    last_used: Instant,
}

/// TCP keepalives on the writers' connections: a server that vanished while a batch waits for
/// its answer (a host lost, a failover) is noticed after ~25 s of silence, its batch answered
/// 503, instead of holding a writer until the system's default of two hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;

/// A session idle for longer is pinged before its next batch, as sqlx's pool checks its
/// connections: one a network or a failover dropped silently meanwhile is then replaced
/// instead of failing that batch. A session in steady use is not (a round trip per batch).
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

pub struct Statements {
    pub begin: Statement,
    pub commit: Statement,
    pub claim_and_lock: Statement,
    pub scenes: Statement,
    pub scenes_and_next: Statement,
    pub delete: Statement,
    pub write: Statement,
}

impl Statements {
    /// Prepares every statement, the requests sent at once.
    async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        let prepare = |sql| client.prepare(sql);
        let (begin, commit, claim_and_lock, scenes, scenes_and_next, delete, write) = tokio::try_join!(
            prepare("BEGIN"),
            prepare("COMMIT"),
            prepare(super::CLAIM_AND_LOCK),
            prepare(super::SCENES),
            prepare(super::SCENES_AND_NEXT),
            prepare(super::DELETE_DELIVERIES),
            prepare(super::WRITE),
        )?;
        Ok(Self {
            begin,
            commit,
            claim_and_lock,
            scenes,
            scenes_and_next,
            delete,
            write,
        })
    }
}

/// One session per writer task, each in a slot of its own: a batch takes a free slot's
/// session, or waits for one.
#[derive(Clone)]
pub struct WriterSessions {
    connector: Arc<Connector>,
    slots: Arc<[Mutex<Option<Session>>]>,
    next: Arc<AtomicUsize>,
    timeout: Duration,
}

impl WriterSessions {
    /// Connects every session now, so that a wrong URL, password or certificate stops the
    /// gateway at start, as the pool's connections do. `timeout` bounds each wait for a
    /// session, its connection included.
    pub async fn open(url: &str, writers: usize, timeout: Duration) -> Result<Self, DbErr> {
        let connector = Arc::new(Connector::from_url(url)?);
        let mut slots = Vec::with_capacity(writers);
        for _ in 0..writers.max(1) {
            slots.push(Mutex::new(Some(connector.connect(timeout).await?)));
        }
        Ok(Self {
            connector,
            slots: slots.into(),
            next: Arc::new(AtomicUsize::new(0)),
            timeout,
        })
    }

    /// A new connection with the writers' settings, outside their slots (for tests and
    /// diagnostics: what it changes goes with it).
    pub async fn connect(&self) -> Result<Client, DbErr> {
        Ok(self.connector.connect(self.timeout).await?.client)
    }

    /// Runs `work` (one transaction) on a session. A session whose connection was lost, or
    /// that a panic left mid-transaction, is dropped (its server rolls back what was in
    /// flight) and the next batch connects anew; after a refused statement it rolls back and
    /// is kept.
    pub async fn run<T>(
        &self,
        work: impl AsyncFnOnce(&Session) -> Result<T, DbErr>,
    ) -> Result<T, DbErr> {
        let mut slot = tokio::time::timeout(self.timeout, self.slot())
            .await
            .map_err(|_| DbErr::ConnectionAcquire(ConnAcquireErr::Timeout))?;
        // Out of its slot while in use: a panic unwinding through here drops it.
        let mut session = match slot.take() {
            Some(session) if self.usable(&session).await => session,
            _ => self.connector.connect(self.timeout).await?,
        };
        let result = work(&session).await;
        session.last_used = Instant::now();
        let keep = match &result {
            Ok(_) => true,
            Err(e) if crate::db::is_unavailable(e) => false,
            // Bounded as the ping is: a session whose ROLLBACK does not come back is dropped
            // rather than holding its slot.
            Err(_) => {
                let rollback = session.client.batch_execute("ROLLBACK");
                matches!(
                    tokio::time::timeout(self.timeout, rollback).await,
                    Ok(Ok(_))
                )
            }
        };
        if keep {
            *slot = Some(session);
        }
        result
    }

    async fn usable(&self, session: &Session) -> bool {
        if session.client.is_closed() {
            return false;
        }
        if session.last_used.elapsed() < PING_IF_IDLE_FOR {
            return true;
        }
        let ping = session.client.simple_query("");
        matches!(tokio::time::timeout(self.timeout, ping).await, Ok(Ok(_)))
    }

    async fn slot(&self) -> MutexGuard<'_, Option<Session>> {
        if let Some(free) = self.slots.iter().find_map(|slot| slot.try_lock().ok()) {
            return free;
        }
        let next = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.slots[next].lock().await
    }
}

/// What a connection is opened with.
struct Connector {
    config: tokio_postgres::Config,
    tls: RustlsConnect,
}

impl Connector {
    fn from_url(url: &str) -> Result<Self, DbErr> {
        let invalid = |e: String| DbErr::Custom(format!("DATABASE_URL: {e}"));
        let options = PgConnectOptions::from_str(url).map_err(|e| invalid(e.to_string()))?;
        let (config, tls) = writer_config(&options);
        let tls = RustlsConnect::new(&tls).map_err(invalid)?;
        Ok(Self { config, tls })
    }

    async fn connect(&self, timeout: Duration) -> Result<Session, DbErr> {
        let connecting = async {
            let (client, connection) = self.config.connect(self.tls.clone()).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    let error = described(&e);
                    tracing::warn!(%error, "an ingestion writer's Postgres connection ended");
                }
            });
            let statements = Statements::prepare(&client).await?;
            Ok(Session {
                client,
                statements,
                last_used: Instant::now(),
            })
        };
        match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(session)) => Ok(session),
            Ok(Err(e)) => Err(DbErr::Conn(RuntimeErr::Internal(described(&e)))),
            Err(_) => Err(DbErr::ConnectionAcquire(ConnAcquireErr::Timeout)),
        }
    }
}

/// The tokio-postgres settings and the TLS settings for what sqlx resolved into `options`.
fn writer_config(options: &PgConnectOptions) -> (tokio_postgres::Config, TlsSettings) {
    let mut config = tokio_postgres::Config::new();
    match options.get_socket() {
        Some(directory) => config.host_path(directory),
        // sqlx takes a host that is a path for a socket's directory, as libpq does.
        None if options.get_host().starts_with('/') => config.host_path(options.get_host()),
        None => config.host(options.get_host()),
    };
    config
        .port(options.get_port())
        .user(options.get_username())
        .connect_timeout(crate::db::CONNECT_TIMEOUT)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_RETRIES);
    if let Some(database) = options.get_database() {
        config.dbname(database);
    }
    if let Some(name) = options.get_application_name() {
        config.application_name(name);
    }
    config.options(match options.get_options() {
        Some(theirs) => format!("{theirs} {SESSION_OPTIONS}"),
        None => SESSION_OPTIONS.to_owned(),
    });
    let (verify, mode) = match options.get_ssl_mode() {
        // sqlx connects without TLS for `allow`, as for `disable`.
        PgSslMode::Disable | PgSslMode::Allow => (Verify::Nothing, SslMode::Disable),
        PgSslMode::Prefer => (Verify::Nothing, SslMode::Prefer),
        PgSslMode::Require => (Verify::Nothing, SslMode::Require),
        PgSslMode::VerifyCa => (Verify::Chain, SslMode::Require),
        PgSslMode::VerifyFull => (Verify::ChainAndName, SslMode::Require),
    };
    config.ssl_mode(mode);
    // The user and host replaced by plain ones: sqlx builds this URL by formatting them into
    // it, which any character special in a URL would break.
    let resolved = options.clone().username("u").host("h").to_url_lossy();
    if let Some(password) = resolved.password() {
        config.password(percent_encoding::percent_decode_str(password).collect::<Vec<u8>>());
    }
    let pem = |name: &str| {
        resolved
            .query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| match value.strip_prefix("file: ") {
                Some(path) => Pem::File(path.into()),
                None => Pem::Inline(value.into_owned()),
            })
    };
    let tls = TlsSettings {
        verify,
        root_cert: pem("sslrootcert"),
        client_cert: pem("sslcert"),
        client_key: pem("sslkey"),
    };
    (config, tls)
}

/// A failure as sea-orm reports sqlx's, so that [`crate::db::is_unavailable`] tells a lost
/// connection (retry later) from a refused statement: connection exceptions (class 08) and the
/// server shutting down or starting (57P01-57P03) are the former, as is anything that never
/// reached the server. The server's message only, never the detail (which quotes values).
pub fn db_err(e: tokio_postgres::Error) -> DbErr {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let message = format!("{code}: {}", db.message());
            if code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03") {
                DbErr::Conn(RuntimeErr::Internal(message))
            } else {
                DbErr::Query(RuntimeErr::Internal(message))
            }
        }
        None => DbErr::Conn(RuntimeErr::Internal(described(&e))),
    }
}

/// tokio-postgres's message with its cause (its own names the kind of failure only).
fn described(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn resolved(url: &str) -> (tokio_postgres::Config, TlsSettings) {
        writer_config(&PgConnectOptions::from_str(url).unwrap())
    }

    #[test]
    fn the_writers_connect_where_sqlx_would() {
        let (config, tls) = resolved(
            "postgres://us%40er:p%40ss%3Aw%2Frd@db.example:6543/scenes?sslmode=verify-full\
             &sslrootcert=/etc/ca.pem&sslcert=/etc/client.pem&sslkey=/etc/client.key\
             &application_name=gw&options=-c%20search_path%3Dhook",
        );
        assert_eq!(
            config.get_hosts(),
            [tokio_postgres::config::Host::Tcp("db.example".into())]
        );
        assert_eq!(config.get_ports(), [6543]);
        assert_eq!(config.get_user(), Some("us@er"));
        assert_eq!(config.get_password(), Some(&b"p@ss:w/rd"[..]));
        assert_eq!(config.get_dbname(), Some("scenes"));
        assert_eq!(config.get_application_name(), Some("gw"));
        assert_eq!(
            config.get_options(),
            Some("-c search_path=hook -c plan_cache_mode=force_generic_plan")
        );
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
        assert_eq!(
            (
                config.get_keepalives(),
                config.get_keepalives_idle(),
                config.get_keepalives_interval(),
                config.get_keepalives_retries()
            ),
            (
                true,
                KEEPALIVE_IDLE,
                Some(KEEPALIVE_INTERVAL),
                Some(KEEPALIVE_RETRIES)
            )
        );
        assert_eq!(
            tls,
            TlsSettings {
                verify: Verify::ChainAndName,
                root_cert: Some(Pem::File(PathBuf::from("/etc/ca.pem"))),
                client_cert: Some(Pem::File(PathBuf::from("/etc/client.pem"))),
                client_key: Some(Pem::File(PathBuf::from("/etc/client.key"))),
            }
        );
    }

    #[test]
    fn each_ssl_mode_means_what_it_means_to_sqlx() {
        let cases = [
            ("disable", SslMode::Disable, Verify::Nothing),
            ("allow", SslMode::Disable, Verify::Nothing),
            ("prefer", SslMode::Prefer, Verify::Nothing),
            ("require", SslMode::Require, Verify::Nothing),
            ("verify-ca", SslMode::Require, Verify::Chain),
            ("verify-full", SslMode::Require, Verify::ChainAndName),
        ];
        for (name, mode, verify) in cases {
            let (config, tls) = resolved(&format!("postgres://u@h/d?sslmode={name}"));
            assert_eq!(
                (config.get_ssl_mode(), tls.verify),
                (mode, verify),
                "{name}"
            );
        }
    }

    #[test]
    fn a_socket_directory_and_inline_certificates_are_kept() {
        // Inline PEM comes from the environment (PGSSLROOTCERT) or sqlx's own setters; a URL's
        // `sslrootcert` always names a file.
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----";
        let options = PgConnectOptions::from_str("postgres://u@%2Fvar%2Frun%2Fpostgresql/d")
            .unwrap()
            .ssl_root_cert_from_pem(pem.as_bytes().to_vec())
            .ssl_client_key_from_pem(pem);
        let (config, tls) = writer_config(&options);
        assert_eq!(
            config.get_hosts(),
            [tokio_postgres::config::Host::Unix(
                "/var/run/postgresql".into()
            )]
        );
        assert_eq!(config.get_password(), None);
        assert_eq!(tls.root_cert, Some(Pem::Inline(pem.into())));
        assert_eq!(tls.client_key, Some(Pem::Inline(pem.into())));
        // A key given inline is a secret: its text stays out of every debug print.
        assert!(!format!("{tls:?}").contains("AAAA"), "{tls:?}");
        assert_eq!(tls.client_cert, None);
    }
}
