//! The pipeline state machine.
//!
//! A project's scenes are generated one after another: scene k starts from scene k-1's last
//! frame. Each scene goes `pending → generating → extracting → verified` (`video_ready` is the
//! instant between a clip arriving and its extraction being queued, which happen in one
//! transaction). When every scene is verified the project goes `stitching → completed`.
//! Failures are retried up to the configured attempts, then the scene and project fail.
//!
//! Every function takes the project as loaded, changes it in place, and returns the outbound
//! [`Job`]s and operator [`Report`]s the change causes; the caller persists all of it in one
//! transaction.

use std::fmt;

use super::webhook::{Callback, Outcome};

macro_rules! status_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

status_enum!(
    /// Where a project is in its life.
    ProjectStatus {
        Draft => "draft",
        Generating => "generating",
        Stitching => "stitching",
        Completed => "completed",
        Failed => "failed",
    }
);

status_enum!(
    /// Where a scene is in its life.
    SceneStatus {
        Pending => "pending",
        Generating => "generating",
        VideoReady => "video_ready",
        Extracting => "extracting",
        Verified => "verified",
        Failed => "failed",
    }
);

/// A scene as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SceneState {
    pub id: String,
    pub position: i32,
    pub prompt: String,
    pub status: SceneStatus,
    pub video_task_id: Option<String>,
    pub video_url: Option<String>,
    pub first_frame_url: Option<String>,
    pub last_frame_url: Option<String>,
    pub attempts: i32,
    pub extract_attempts: i32,
    pub last_error: Option<String>,
    /// Set when the scene became verified in this transition.
    pub just_verified: bool,
    pub changed: bool,
}

impl SceneState {
    /// Queues an attempt at this scene's video, starting from `first_frame_url`.
    fn queue_generation(&mut self, first_frame_url: Option<String>, effects: &mut Effects) {
        self.status = SceneStatus::Generating;
        self.first_frame_url = first_frame_url.clone();
        self.video_task_id = None;
        self.video_url = None;
        self.attempts += 1;
        self.changed = true;
        effects.jobs.push(Job::GenerateScene {
            scene_id: self.id.clone(),
            prompt: self.prompt.clone(),
            first_frame_url,
        });
    }
}

/// A project with its scenes, in position order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectState {
    pub id: String,
    pub status: ProjectStatus,
    pub final_video_url: Option<String>,
    pub stitch_attempts: i32,
    pub last_error: Option<String>,
    pub scenes: Vec<SceneState>,
    /// Set when the project became completed in this transition.
    pub just_completed: bool,
    pub changed: bool,
}

/// How many times each step is tried before the scene or project fails.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_scene_attempts: i32,
    pub max_extract_attempts: i32,
    pub max_stitch_attempts: i32,
}

/// Events the notification service is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectEvent {
    Completed,
    Failed,
}

impl ProjectEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "project.completed",
            Self::Failed => "project.failed",
        }
    }
}

/// Outbound work a transition asks for; written to the outbox in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    GenerateScene {
        scene_id: String,
        prompt: String,
        first_frame_url: Option<String>,
    },
    ExtractLastFrame {
        scene_id: String,
        video_url: String,
    },
    Stitch {
        video_urls: Vec<String>,
    },
    Notify {
        event: ProjectEvent,
        final_video_url: Option<String>,
        error: Option<String>,
    },
}

/// Severity of an operator report, mirrored by the error store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportLevel {
    Success,
    Warning,
    Error,
}

/// Something operators should see in the global error store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub level: ReportLevel,
    /// `generation`, `processing`, `success`, …
    pub kind: &'static str,
    pub message: String,
}

/// What a transition produced besides the state change itself.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effects {
    pub jobs: Vec<Job>,
    pub reports: Vec<Report>,
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionError {
    SceneNotFound,
    /// A late callback from an attempt that was superseded.
    StaleTask {
        current: String,
    },
    /// The state machine does not allow this event now.
    Invalid(String),
    /// An operator command that conflicts with the project's state.
    Conflict(String),
}

impl ProjectState {
    fn scene_index(&self, scene_id: &str) -> Result<usize, TransitionError> {
        self.scenes
            .iter()
            .position(|s| s.id == scene_id)
            .ok_or(TransitionError::SceneNotFound)
    }

    fn fail(&mut self, effects: &mut Effects, message: String) {
        self.status = ProjectStatus::Failed;
        self.last_error = Some(message.clone());
        self.changed = true;
        effects.jobs.push(Job::Notify {
            event: ProjectEvent::Failed,
            final_video_url: None,
            error: Some(message),
        });
    }

    /// Queues generation of the scene at `index`, chained from the previous scene's last frame.
    fn queue_generation(&mut self, index: usize, effects: &mut Effects) {
        let first_frame_url = index
            .checked_sub(1)
            .and_then(|prev| self.scenes[prev].last_frame_url.clone());
        self.scenes[index].queue_generation(first_frame_url, effects);
    }

    fn queue_stitch(&mut self, effects: &mut Effects) {
        self.status = ProjectStatus::Stitching;
        self.stitch_attempts += 1;
        self.changed = true;
        effects.jobs.push(Job::Stitch {
            video_urls: self
                .scenes
                .iter()
                .filter_map(|s| s.video_url.clone())
                .collect(),
        });
    }
}

fn check_task(scene: &SceneState, task_id: &str) -> Result<(), TransitionError> {
    match &scene.video_task_id {
        Some(current) if current != task_id => Err(TransitionError::StaleTask {
            current: current.clone(),
        }),
        _ => Ok(()),
    }
}

/// The scenes [`apply_callback`] reads for a callback. A caller may hand it a project holding
/// only these scenes (in position order, as always) and gets the same result as with all of
/// them: a video callback reads its own scene alone (a retry starts from the scene's own first
/// frame); the other callbacks decide on the whole project (which scene is next, every clip
/// for stitching).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScenesRead<'a> {
    Scene(&'a str),
    All,
}

pub fn scenes_read(callback: &Callback) -> ScenesRead<'_> {
    match callback {
        Callback::Video { scene_id, .. } => ScenesRead::Scene(scene_id.as_str()),
        Callback::LastFrame { .. } | Callback::Stitch { .. } => ScenesRead::All,
    }
}

/// Applies a verified, deduplicated webhook callback.
pub fn apply_callback(
    project: &mut ProjectState,
    callback: &Callback,
    limits: &Limits,
) -> Result<Effects, TransitionError> {
    let mut effects = Effects::default();
    match callback {
        Callback::Video {
            scene_id,
            task_id,
            outcome,
            ..
        } => {
            let index = project.scene_index(scene_id.as_str())?;
            let scene = &mut project.scenes[index];
            check_task(scene, task_id)?;
            if scene.status != SceneStatus::Generating {
                return Err(TransitionError::Invalid(format!(
                    "scene `{}` is {}, not generating: a video callback is not expected",
                    scene.id, scene.status
                )));
            }
            scene.video_task_id = Some(task_id.clone());
            scene.changed = true;
            match outcome {
                Outcome::Completed { url } => {
                    scene.video_url = Some(url.clone());
                    scene.status = SceneStatus::Extracting;
                    scene.last_error = None;
                    effects.jobs.push(Job::ExtractLastFrame {
                        scene_id: scene.id.clone(),
                        video_url: url.clone(),
                    });
                }
                Outcome::Failed { error } => {
                    scene.last_error = Some(error.clone());
                    if scene.attempts < limits.max_scene_attempts {
                        effects.reports.push(Report {
                            level: ReportLevel::Warning,
                            kind: "generation",
                            message: format!(
                                "Scene {} generation failed (attempt {}), retrying",
                                scene.id, scene.attempts
                            ),
                        });
                        // The new attempt starts from the frame the failed one was chained
                        // from, so this callback reads no other scene.
                        let first_frame_url = scene.first_frame_url.clone();
                        scene.queue_generation(first_frame_url, &mut effects);
                    } else {
                        scene.status = SceneStatus::Failed;
                        let message = format!(
                            "Scene {} generation failed after {} attempts: {error}",
                            scene.id, scene.attempts
                        );
                        effects.reports.push(Report {
                            level: ReportLevel::Error,
                            kind: "generation",
                            message: message.clone(),
                        });
                        project.fail(&mut effects, message);
                    }
                }
            }
        }
        Callback::LastFrame {
            scene_id, outcome, ..
        } => {
            let index = project.scene_index(scene_id.as_str())?;
            let scene = &mut project.scenes[index];
            if scene.status != SceneStatus::Extracting {
                return Err(TransitionError::Invalid(format!(
                    "scene `{}` is {}, not extracting: a last-frame callback is not expected",
                    scene.id, scene.status
                )));
            }
            scene.changed = true;
            match outcome {
                Outcome::Completed { url } => {
                    scene.last_frame_url = Some(url.clone());
                    scene.status = SceneStatus::Verified;
                    scene.just_verified = true;
                    scene.last_error = None;
                    effects.reports.push(Report {
                        level: ReportLevel::Success,
                        kind: "success",
                        message: format!("Scene {} verified", scene.id),
                    });
                    let next = project
                        .scenes
                        .iter()
                        .position(|s| s.status != SceneStatus::Verified);
                    match next {
                        Some(next) if project.status == ProjectStatus::Generating => {
                            project.queue_generation(next, &mut effects);
                        }
                        Some(_) => {}
                        None => project.queue_stitch(&mut effects),
                    }
                }
                Outcome::Failed { error } => {
                    scene.last_error = Some(error.clone());
                    if scene.extract_attempts < limits.max_extract_attempts {
                        scene.extract_attempts += 1;
                        effects.jobs.push(Job::ExtractLastFrame {
                            scene_id: scene.id.clone(),
                            video_url: scene.video_url.clone().unwrap_or_default(),
                        });
                    } else {
                        scene.status = SceneStatus::Failed;
                        let message = format!(
                            "Scene {} last-frame extraction failed after {} attempts: {error}",
                            scene.id, scene.extract_attempts
                        );
                        effects.reports.push(Report {
                            level: ReportLevel::Error,
                            kind: "processing",
                            message: message.clone(),
                        });
                        project.fail(&mut effects, message);
                    }
                }
            }
        }
        Callback::Stitch { outcome, .. } => {
            if project.status != ProjectStatus::Stitching {
                return Err(TransitionError::Invalid(format!(
                    "project `{}` is {}, not stitching: a stitch callback is not expected",
                    project.id, project.status
                )));
            }
            project.changed = true;
            match outcome {
                Outcome::Completed { url } => {
                    project.status = ProjectStatus::Completed;
                    project.final_video_url = Some(url.clone());
                    project.last_error = None;
                    project.just_completed = true;
                    effects.jobs.push(Job::Notify {
                        event: ProjectEvent::Completed,
                        final_video_url: Some(url.clone()),
                        error: None,
                    });
                    effects.reports.push(Report {
                        level: ReportLevel::Success,
                        kind: "success",
                        message: format!("Project {} completed", project.id),
                    });
                }
                Outcome::Failed { error } => {
                    project.last_error = Some(error.clone());
                    if project.stitch_attempts < limits.max_stitch_attempts {
                        project.queue_stitch(&mut effects);
                    } else {
                        let message = format!(
                            "Project {} stitching failed after {} attempts: {error}",
                            project.id, project.stitch_attempts
                        );
                        effects.reports.push(Report {
                            level: ReportLevel::Error,
                            kind: "processing",
                            message: message.clone(),
                        });
                        project.fail(&mut effects, message);
                    }
                }
            }
        }
    }
    Ok(effects)
}

/// An operator starts (or resumes) a project: the first scene not yet verified is generated,
/// or, when all are verified, stitching is queued again.
pub fn start_generation(project: &mut ProjectState) -> Result<Effects, TransitionError> {
    match project.status {
        ProjectStatus::Generating | ProjectStatus::Stitching => {
            return Err(TransitionError::Conflict(format!(
                "project `{}` is already {}",
                project.id, project.status
            )));
        }
        ProjectStatus::Completed => {
            return Err(TransitionError::Conflict(format!(
                "project `{}` is already completed",
                project.id
            )));
        }
        ProjectStatus::Draft | ProjectStatus::Failed => {}
    }
    let mut effects = Effects::default();
    project.last_error = None;
    project.changed = true;
    match project
        .scenes
        .iter()
        .position(|s| s.status != SceneStatus::Verified)
    {
        Some(index) => {
            project.status = ProjectStatus::Generating;
            let scene = &mut project.scenes[index];
            if scene.status == SceneStatus::Failed {
                // A resumed scene gets a fresh set of attempts.
                scene.attempts = 0;
                scene.extract_attempts = 0;
                scene.last_error = None;
            }
            project.queue_generation(index, &mut effects);
        }
        None => {
            project.stitch_attempts = 0;
            project.queue_stitch(&mut effects);
        }
    }
    Ok(effects)
}

/// The video service answered a generation request with its task id. Stored unless the
/// callback already arrived and stored it, or the scene moved on.
pub fn record_video_task(scene: &mut SceneState, task_id: &str) -> bool {
    if scene.status == SceneStatus::Generating && scene.video_task_id.is_none() {
        scene.video_task_id = Some(task_id.to_owned());
        scene.changed = true;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::Id;

    const LIMITS: Limits = Limits {
        max_scene_attempts: 3,
        max_extract_attempts: 2,
        max_stitch_attempts: 2,
    };

    fn project(scenes: usize) -> ProjectState {
        ProjectState {
            id: "proj".into(),
            status: ProjectStatus::Draft,
            final_video_url: None,
            stitch_attempts: 0,
            last_error: None,
            just_completed: false,
            changed: false,
            scenes: (0..scenes)
                .map(|i| SceneState {
                    id: format!("s{i}"),
                    position: i as i32,
                    prompt: format!("prompt {i}"),
                    status: SceneStatus::Pending,
                    video_task_id: None,
                    video_url: None,
                    first_frame_url: None,
                    last_frame_url: None,
                    attempts: 0,
                    extract_attempts: 0,
                    last_error: None,
                    just_verified: false,
                    changed: false,
                })
                .collect(),
        }
    }

    fn video(scene: &str, task: &str, outcome: Outcome) -> Callback {
        Callback::Video {
            project_id: Id::parse("proj").unwrap(),
            scene_id: Id::parse(scene).unwrap(),
            task_id: task.into(),
            outcome,
        }
    }
    fn frame(scene: &str, outcome: Outcome) -> Callback {
        Callback::LastFrame {
            project_id: Id::parse("proj").unwrap(),
            scene_id: Id::parse(scene).unwrap(),
            task_id: format!("lf_{scene}"),
            outcome,
        }
    }
    fn stitch(outcome: Outcome) -> Callback {
        Callback::Stitch {
            project_id: Id::parse("proj").unwrap(),
            task_id: "st".into(),
            outcome,
        }
    }
    fn done(url: &str) -> Outcome {
        Outcome::Completed { url: url.into() }
    }
    fn failed() -> Outcome {
        Outcome::Failed {
            error: "boom".into(),
        }
    }

    /// Drives a project to the point where every scene is verified.
    fn run_scenes(p: &mut ProjectState) -> Vec<Job> {
        let mut jobs = start_generation(p).unwrap().jobs;
        for i in 0..p.scenes.len() {
            let id = format!("s{i}");
            jobs.extend(
                apply_callback(
                    p,
                    &video(&id, &format!("t{i}"), done(&format!("http://v/{i}"))),
                    &LIMITS,
                )
                .unwrap()
                .jobs,
            );
            jobs.extend(
                apply_callback(p, &frame(&id, done(&format!("http://f/{i}"))), &LIMITS)
                    .unwrap()
                    .jobs,
            );
        }
        jobs
    }

    #[test]
    fn generate_queues_the_first_scene_without_a_first_frame() {
        let mut p = project(2);
        let effects = start_generation(&mut p).unwrap();
        assert_eq!(p.status, ProjectStatus::Generating);
        assert_eq!(p.scenes[0].status, SceneStatus::Generating);
        assert_eq!(p.scenes[0].attempts, 1);
        assert_eq!(
            effects.jobs,
            vec![Job::GenerateScene {
                scene_id: "s0".into(),
                prompt: "prompt 0".into(),
                first_frame_url: None
            }]
        );
        assert!(matches!(
            start_generation(&mut p),
            Err(TransitionError::Conflict(_))
        ));
    }

    #[test]
    fn scenes_chain_on_the_previous_last_frame_and_then_stitch_in_order() {
        let mut p = project(3);
        let jobs = run_scenes(&mut p);
        let firsts: Vec<_> = jobs
            .iter()
            .filter_map(|j| match j {
                Job::GenerateScene {
                    first_frame_url, ..
                } => Some(first_frame_url.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            firsts,
            vec![None, Some("http://f/0".into()), Some("http://f/1".into())]
        );
        assert_eq!(p.status, ProjectStatus::Stitching);
        assert_eq!(
            jobs.last(),
            Some(&Job::Stitch {
                video_urls: vec![
                    "http://v/0".into(),
                    "http://v/1".into(),
                    "http://v/2".into()
                ]
            })
        );
        let effects = apply_callback(&mut p, &stitch(done("http://final")), &LIMITS).unwrap();
        assert_eq!(p.status, ProjectStatus::Completed);
        assert!(p.just_completed);
        assert_eq!(p.final_video_url.as_deref(), Some("http://final"));
        assert!(matches!(
            effects.jobs.as_slice(),
            [Job::Notify {
                event: ProjectEvent::Completed,
                ..
            }]
        ));
        assert!(
            effects
                .reports
                .iter()
                .any(|r| r.level == ReportLevel::Success)
        );
    }

    /// `p` with only the scenes `scenes_read` names for `callback`.
    fn only_scenes_read(p: &ProjectState, callback: &Callback) -> ProjectState {
        let mut part = p.clone();
        if let ScenesRead::Scene(id) = scenes_read(callback) {
            part.scenes.retain(|s| s.id == id);
        }
        part
    }

    #[test]
    fn a_video_callback_decides_the_same_on_its_scene_alone() {
        let attempts_left = |p: &mut ProjectState, i: usize, attempts: i32| {
            p.scenes[i].attempts = attempts;
            p.clone()
        };
        // Scenes 0 and 1 verified, scene 2 generating (task t2), scene 3 pending.
        let mut chained = project(4);
        start_generation(&mut chained).unwrap();
        for i in 0..2 {
            let id = format!("s{i}");
            let url = format!("http://v/{i}");
            apply_callback(
                &mut chained,
                &video(&id, &format!("t{i}"), done(&url)),
                &LIMITS,
            )
            .unwrap();
            apply_callback(
                &mut chained,
                &frame(&id, done(&format!("http://f/{i}"))),
                &LIMITS,
            )
            .unwrap();
        }
        apply_callback(&mut chained, &video("s2", "t2", failed()), &LIMITS).unwrap();
        let mut first = project(4);
        start_generation(&mut first).unwrap();
        let cases = [
            (chained.clone(), video("s2", "t2", done("http://v/2"))),
            (chained.clone(), video("s2", "t2", failed())),
            (
                attempts_left(&mut chained.clone(), 2, LIMITS.max_scene_attempts),
                video("s2", "t2", failed()),
            ),
            (chained.clone(), video("s2", "other", done("http://v/2"))),
            (chained.clone(), video("s3", "t3", done("http://v/3"))),
            (chained.clone(), video("s9", "t9", done("http://v/9"))),
            (first.clone(), video("s0", "t0", done("http://v/0"))),
            (first.clone(), video("s0", "t0", failed())),
        ];
        for (mut project, callback) in cases {
            // As loaded from the database: nothing changed yet.
            project.changed = false;
            for scene in &mut project.scenes {
                scene.changed = false;
                scene.just_verified = false;
            }
            let mut whole = project.clone();
            let mut part = only_scenes_read(&project, &callback);
            assert!(part.scenes.len() <= 1);
            let on_whole = apply_callback(&mut whole, &callback, &LIMITS);
            let on_part = apply_callback(&mut part, &callback, &LIMITS);
            assert_eq!(on_whole, on_part, "{callback:?}");
            for scene in &part.scenes {
                assert_eq!(Some(scene), whole.scenes.iter().find(|s| s.id == scene.id));
            }
            assert!(
                whole
                    .scenes
                    .iter()
                    .all(|s| !s.changed || part.scenes.iter().any(|p| p.id == s.id))
            );
            part.scenes = whole.scenes.clone();
            assert_eq!(part, whole, "{callback:?}");
        }
    }

    #[test]
    fn callbacks_other_than_video_read_the_whole_project() {
        assert_eq!(
            scenes_read(&frame("s0", done("http://f/0"))),
            ScenesRead::All
        );
        assert_eq!(scenes_read(&stitch(done("http://final"))), ScenesRead::All);
    }

    #[test]
    fn video_complete_moves_generating_to_extracting() {
        let mut p = project(1);
        start_generation(&mut p).unwrap();
        let effects =
            apply_callback(&mut p, &video("s0", "t0", done("http://v")), &LIMITS).unwrap();
        assert_eq!(p.scenes[0].status, SceneStatus::Extracting);
        assert_eq!(p.scenes[0].video_task_id.as_deref(), Some("t0"));
        assert_eq!(
            effects.jobs,
            vec![Job::ExtractLastFrame {
                scene_id: "s0".into(),
                video_url: "http://v".into()
            }]
        );
    }

    #[test]
    fn a_callback_from_a_superseded_task_is_stale() {
        let mut p = project(1);
        start_generation(&mut p).unwrap();
        assert!(record_video_task(&mut p.scenes[0], "t_current"));
        assert!(!record_video_task(&mut p.scenes[0], "t_other"));
        let err = apply_callback(&mut p, &video("s0", "t_old", done("http://v")), &LIMITS);
        assert_eq!(
            err,
            Err(TransitionError::StaleTask {
                current: "t_current".into()
            })
        );
        assert_eq!(p.scenes[0].status, SceneStatus::Generating);
    }

    #[test]
    fn transitions_the_machine_forbids_are_invalid() {
        let mut p = project(1);
        // Video for a scene never started.
        assert!(matches!(
            apply_callback(&mut p, &video("s0", "t", done("http://v")), &LIMITS),
            Err(TransitionError::Invalid(_))
        ));
        // Last frame before the video completed.
        start_generation(&mut p).unwrap();
        assert!(matches!(
            apply_callback(&mut p, &frame("s0", done("http://f")), &LIMITS),
            Err(TransitionError::Invalid(_))
        ));
        // Stitch while generating.
        assert!(matches!(
            apply_callback(&mut p, &stitch(done("http://x")), &LIMITS),
            Err(TransitionError::Invalid(_))
        ));
        // A second, different video for a verified scene.
        let mut p = project(1);
        run_scenes(&mut p);
        assert!(matches!(
            apply_callback(&mut p, &video("s0", "t0", done("http://other")), &LIMITS),
            Err(TransitionError::Invalid(_))
        ));
        assert_eq!(
            apply_callback(&mut p, &video("nope", "t", done("http://v")), &LIMITS),
            Err(TransitionError::SceneNotFound)
        );
    }

    #[test]
    fn failed_videos_are_retried_then_fail_scene_and_project() {
        let mut p = project(2);
        start_generation(&mut p).unwrap();
        for attempt in 1..3 {
            let effects = apply_callback(
                &mut p,
                &video("s0", &format!("t{attempt}"), failed()),
                &LIMITS,
            )
            .unwrap();
            assert!(matches!(
                effects.jobs.as_slice(),
                [Job::GenerateScene { .. }]
            ));
            assert_eq!(p.scenes[0].attempts, attempt + 1);
            assert_eq!(p.scenes[0].video_task_id, None);
        }
        let effects = apply_callback(&mut p, &video("s0", "t3", failed()), &LIMITS).unwrap();
        assert_eq!(p.scenes[0].status, SceneStatus::Failed);
        assert_eq!(p.status, ProjectStatus::Failed);
        assert!(matches!(
            effects.jobs.as_slice(),
            [Job::Notify {
                event: ProjectEvent::Failed,
                ..
            }]
        ));
        assert!(
            effects
                .reports
                .iter()
                .any(|r| r.level == ReportLevel::Error)
        );
        // An operator resumes: the failed scene starts over with fresh attempts.
        let effects = start_generation(&mut p).unwrap();
        assert_eq!(p.status, ProjectStatus::Generating);
        assert_eq!(p.scenes[0].attempts, 1);
        assert!(matches!(
            effects.jobs.as_slice(),
            [Job::GenerateScene { .. }]
        ));
    }

    #[test]
    fn a_retried_scene_starts_again_from_the_frame_it_was_chained_from() {
        let mut p = project(2);
        start_generation(&mut p).unwrap();
        apply_callback(&mut p, &video("s0", "t0", done("http://v/0")), &LIMITS).unwrap();
        apply_callback(&mut p, &frame("s0", done("http://f/0")), &LIMITS).unwrap();
        let effects = apply_callback(&mut p, &video("s1", "t1", failed()), &LIMITS).unwrap();
        assert_eq!(
            effects.jobs,
            vec![Job::GenerateScene {
                scene_id: "s1".into(),
                prompt: "prompt 1".into(),
                first_frame_url: Some("http://f/0".into()),
            }]
        );
        assert_eq!(p.scenes[1].first_frame_url.as_deref(), Some("http://f/0"));
    }

    #[test]
    fn failed_extraction_is_requeued_then_fails() {
        let mut p = project(1);
        start_generation(&mut p).unwrap();
        apply_callback(&mut p, &video("s0", "t0", done("http://v")), &LIMITS).unwrap();
        for _ in 0..2 {
            let effects = apply_callback(&mut p, &frame("s0", failed()), &LIMITS).unwrap();
            assert!(matches!(
                effects.jobs.as_slice(),
                [Job::ExtractLastFrame { .. }]
            ));
        }
        apply_callback(&mut p, &frame("s0", failed()), &LIMITS).unwrap();
        assert_eq!(p.scenes[0].status, SceneStatus::Failed);
        assert_eq!(p.status, ProjectStatus::Failed);
    }

    #[test]
    fn failed_stitch_is_requeued_then_fails_and_resume_restitches() {
        let mut p = project(1);
        run_scenes(&mut p);
        assert_eq!(p.stitch_attempts, 1);
        let effects = apply_callback(&mut p, &stitch(failed()), &LIMITS).unwrap();
        assert!(matches!(effects.jobs.as_slice(), [Job::Stitch { .. }]));
        let effects = apply_callback(&mut p, &stitch(failed()), &LIMITS).unwrap();
        assert_eq!(p.status, ProjectStatus::Failed);
        assert!(matches!(
            effects.jobs.as_slice(),
            [Job::Notify {
                event: ProjectEvent::Failed,
                ..
            }]
        ));
        let effects = start_generation(&mut p).unwrap();
        assert_eq!(p.status, ProjectStatus::Stitching);
        assert!(matches!(effects.jobs.as_slice(), [Job::Stitch { .. }]));
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for s in SceneStatus::ALL {
            assert_eq!(SceneStatus::parse(s.as_str()), Some(*s));
        }
        for s in ProjectStatus::ALL {
            assert_eq!(ProjectStatus::parse(s.as_str()), Some(*s));
        }
        assert_eq!(ProjectStatus::parse("nope"), None);
    }
}
