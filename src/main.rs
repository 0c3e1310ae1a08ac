//! The gateway binary: load config, start, serve, shut down gracefully.
//! `scenehook demo` runs gateway and fake services together on a 3-scene project.

use std::{process::ExitCode, time::Duration};

use scenehook::{
    Gateway,
    config::{Config, Purpose},
    telemetry,
};

mod demo;

/// mimalloc instead of glibc's malloc: with the two cores busy, glibc's frees and consolidations
/// took ~15 % of the request threads' and the SQLite writer's time; mimalloc made the embedded
/// gateway 14 % faster (docs/performance-log.md, *The allocator*).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str);
    // Answered before the configuration is read: they need none.
    match command {
        Some("--help" | "-h" | "help") => {
            println!("{HELP_TITLE}\n\n{USAGE}\n\n{HELP}");
            return ExitCode::SUCCESS;
        }
        Some("--version" | "-V") => {
            println!("scenehook {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let purpose = match command {
        Some("migrate" | "backup") => Purpose::Maintain,
        _ => Purpose::Serve,
    };
    let mut config = match Config::load(purpose) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if args.iter().any(|a| a == "--no-migrate") {
        config.run_migrations = false;
    }
    // Held to the end of `main`: its drop writes out the log lines still queued.
    let _log_writer = telemetry::init_tracing(config.log_format == "json");
    match command {
        Some("demo") => demo::run(config).await,
        Some("migrate") => migrate(config, &args[1..]).await,
        Some("backup") => backup(&config, args.get(1)).await,
        Some("--no-migrate") | None => run(config).await,
        Some(other) => {
            eprintln!("unknown command `{other}`; {USAGE}");
            ExitCode::from(2)
        }
    }
}

async fn run(config: Config) -> ExitCode {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    if !config.is_production() {
        let warnings = config.development_warnings();
        if !warnings.is_empty() {
            tracing::warn!(
                "DEVELOPMENT MODE, not for production: {}",
                warnings.join("; ")
            );
        }
    }
    let bind = config.bind_addr;
    let metrics_bind = config.metrics_bind_addr.clone();
    let grace = config.shutdown_grace();
    let gateway = match Gateway::start(config).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("start-up failed: {e}");
            return ExitCode::from(1);
        }
    };
    let listener = match tokio::net::TcpListener::bind(bind).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {bind}: {e}");
            return ExitCode::from(1);
        }
    };
    if let Ok(addr) = metrics_bind.parse::<std::net::SocketAddr>() {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tokio::spawn(gateway.serve_plain(l, std::future::pending()));
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot serve metrics on the separate port")
            }
        }
    }
    tokio::spawn(reload_on_hangup(
        gateway.file_reloads(),
        gateway.reloads_files(),
    ));
    tracing::info!(
        %bind,
        https = gateway.is_https(),
        version = env!("CARGO_PKG_VERSION"),
        "scenehook listening"
    );
    gateway.serve(listener, shutdown_signal()).await;
    tracing::info!("stopped accepting; finishing background work");
    gateway.stop(grace).await;
    ExitCode::SUCCESS
}

/// What `scenehook migrate [up | status | down N]` was asked.
enum MigrateCommand {
    Up,
    Status,
    Down(u32),
}

impl MigrateCommand {
    fn parse(args: &[String]) -> Option<Self> {
        let args: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .filter(|a| *a != "--no-migrate")
            .collect();
        match args[..] {
            [] | ["up"] => Some(Self::Up),
            ["status"] => Some(Self::Status),
            ["down", steps] => steps.parse().ok().filter(|&n| n > 0).map(Self::Down),
            _ => None,
        }
    }
}

/// `scenehook migrate`: applies the pending migrations (`up`, the default), under the lock an
/// instance's start takes, and exits; for a release step (a job, an init container) ahead of
/// instances started with `--no-migrate`. `down N` rolls back the last N under the same lock,
/// back to an earlier release's schema; `status` lists them.
async fn migrate(config: Config, args: &[String]) -> ExitCode {
    let Some(command) = MigrateCommand::parse(args) else {
        eprintln!("migrate takes `up`, `status` or `down N` (N at least 1); {USAGE}");
        return ExitCode::from(2);
    };
    let db = match scenehook::db::connect(&config).await {
        Ok(db) => db,
        Err(e) => {
            eprintln!("cannot connect to the database: {e}");
            return ExitCode::from(1);
        }
    };
    let done = match command {
        MigrateCommand::Up => scenehook::db::migrate(&db)
            .await
            .map(|()| tracing::info!("the database is migrated")),
        MigrateCommand::Down(steps) => scenehook::db::roll_back(&db, steps)
            .await
            .map(|()| tracing::info!(steps, "migrations rolled back")),
        MigrateCommand::Status => scenehook::db::migration_status(&db).await.map(|all| {
            for (name, applied) in all {
                println!("{} {name}", if applied { "applied" } else { "pending" });
            }
        }),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("migrate failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// `scenehook backup PATH`: a consistent copy of the embedded database, taken while the
/// gateway runs ([`scenehook::db::backup_sqlite`]). Postgres has its own tools.
async fn backup(config: &Config, target: Option<&String>) -> ExitCode {
    let Some(target) = target
        .filter(|t| !t.starts_with('-'))
        .map(std::path::PathBuf::from)
    else {
        eprintln!("backup needs the copy's path; {USAGE}");
        return ExitCode::from(2);
    };
    let Some(database) = scenehook::db::sqlite_file(&config.database_url) else {
        eprintln!(
            "backup copies the embedded SQLite database; DATABASE_URL names another \
             (on Postgres, use pg_dump or the server's own backups)"
        );
        return ExitCode::from(2);
    };
    let copied = tokio::task::spawn_blocking({
        let target = target.clone();
        move || scenehook::db::backup_sqlite(std::path::Path::new(&database), &target)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|copied| copied.map_err(|e| e.to_string()));
    match copied {
        Ok(()) => {
            tracing::info!(target = %target.display(), "backup written");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("backup failed: {e}");
            ExitCode::from(1)
        }
    }
}

const USAGE: &str =
    "usage: scenehook [demo | migrate [up | status | down N] | backup PATH] [--no-migrate]";

const HELP_TITLE: &str = "scenehook: the webhook gateway of the scene-by-scene video pipeline";

/// What `--help` prints below the title and the usage.
const HELP: &str = "\
  (no command)   serve: migrate the database (unless --no-migrate), then listen on BIND_ADDR
  demo           the gateway and the fake services in one process, driving a 3-scene project
  migrate        apply the database migrations and exit (a release step)
  migrate status list the migrations, applied or pending
  migrate down N roll back the last N migrations (to an earlier release's schema)
  backup PATH    copy the embedded SQLite database to PATH while the gateway runs
  --help, -h     this text
  --version, -V  the version

Configuration: config/*.toml (or $SCENEHOOK_CONFIG_DIR), then environment variables
(DATABASE_URL, REDIS_URL, VIDEO_WEBHOOK_SECRET, ..., SCENEHOOK_<SECTION>__<KEY>); every key
is in config/default.toml and README's Configuration section.

Signals: SIGTERM or SIGINT stop it gracefully; SIGHUP reads the HTTPS certificate and the
secrets given as files (NAME_FILE) again at once.";

/// SIGHUP reads the certificate and secret files at once (a renewal's deploy hook, after a
/// rotation), as it reloads nginx or HAProxy; with no such file it is logged and ignored
/// rather than ending the process.
async fn reload_on_hangup(reloads: scenehook::FileReloads, any_files: bool) {
    #[cfg(unix)]
    if let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    {
        while hangups.recv().await.is_some() {
            if any_files {
                reloads.request();
            } else {
                tracing::info!("SIGHUP: no certificate or secret file to read again");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (reloads, any_files);
}

/// SIGTERM (orchestrators) or SIGINT (a terminal).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    // A second signal during the grace period exits at once.
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = tokio::signal::ctrl_c().await;
        std::process::exit(130);
    });
}
