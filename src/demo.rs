//! `scenehook demo`: gateway and fake services in one process; a 3-scene project goes from
//! `generate` to its final video, with a progress bar.

use std::{process::ExitCode, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};
use scenehook::{
    Gateway,
    config::Config,
    db::pipeline::{self, NewProject},
    fakes::{FakeConfig, FakeServices},
};

pub async fn run(mut config: Config) -> ExitCode {
    let fakes = match FakeServices::start(
        FakeConfig::for_gateway(&config, Duration::from_millis(400)),
        "127.0.0.1:0".parse().expect("a valid address"),
    )
    .await
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cannot start the fake services: {e}");
            return ExitCode::from(1);
        }
    };
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen: {e}");
            return ExitCode::from(1);
        }
    };
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    config
        .services
        .point_all_at(&fakes.url().parse().expect("a valid URL"));
    config.app_url = format!("http://{addr}").parse().expect("a valid URL");
    if config.database_url.starts_with("sqlite:") {
        config.database_url = "sqlite://data/demo.db?mode=rwc".into();
    }
    let gateway = match Gateway::start(config).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("start-up failed: {e}");
            return ExitCode::from(1);
        }
    };
    tokio::spawn(gateway.serve(listener, std::future::pending()));
    let db = gateway.state.db.clone();
    let id = format!("demo_{}", scenehook::domain::ids::random_token(6));
    let prompts = [
        "A lighthouse at dawn, waves rolling in",
        "The lighthouse keeper climbs the spiral stairs",
        "The lamp turns on as the sun rises",
    ];
    let created = pipeline::create_project(
        &db,
        NewProject {
            id: id.clone(),
            name: "Demo: the lighthouse".into(),
            scenes: prompts
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("{id}_s{i}"), (*p).to_owned()))
                .collect(),
        },
    )
    .await;
    if let Err(e) = created {
        eprintln!("cannot create the demo project: {e}");
        return ExitCode::from(1);
    }
    println!("gateway on http://{addr}, fake services on {}", fakes.url());
    println!("project {id}: 3 scenes, generating…");
    let ctx = gateway.state.job_context(None);
    match pipeline::generate(&db, &id, &ctx).await {
        Ok(effects) => gateway.state.wake_outbox(&effects.jobs),
        Err(e) => {
            eprintln!("cannot start generation: {e}");
            return ExitCode::from(1);
        }
    }
    // Steps: per scene generate + verify, then stitch.
    let bar = ProgressBar::new((prompts.len() * 2 + 1) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let Ok(Some((project, scenes))) = pipeline::find_project(&db, &id).await else {
            eprintln!("the demo project vanished");
            return ExitCode::from(1);
        };
        let done = scenes
            .iter()
            .map(|s| match s.status.as_str() {
                "verified" => 2,
                "extracting" | "video_ready" => 1,
                _ => 0,
            })
            .sum::<u64>()
            + u64::from(project.status == "completed");
        bar.set_position(done);
        let current = scenes.iter().find(|s| s.status != "verified");
        bar.set_message(match current {
            Some(s) => format!("scene {} {}", s.position + 1, s.status),
            None => format!("project {}", project.status),
        });
        match project.status.as_str() {
            "completed" => {
                bar.finish_with_message("completed");
                println!(
                    "final video: {}",
                    project.final_video_url.unwrap_or_default()
                );
                for s in scenes {
                    println!(
                        "  scene {}: first frame {} → last frame {}",
                        s.position + 1,
                        s.first_frame_url.as_deref().unwrap_or("(none)"),
                        s.last_frame_url.as_deref().unwrap_or("?")
                    );
                }
                gateway.stop(Duration::from_secs(5)).await;
                return ExitCode::SUCCESS;
            }
            "failed" => {
                bar.abandon_with_message("failed");
                eprintln!("project failed: {}", project.last_error.unwrap_or_default());
                return ExitCode::from(1);
            }
            _ if tokio::time::Instant::now() > deadline => {
                bar.abandon_with_message("timed out");
                return ExitCode::from(1);
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
