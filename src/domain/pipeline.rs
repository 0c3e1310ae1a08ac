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

use super::webhook::{Callback, Outcome};
use crate::text_enum::text_enum;

text_enum!(
    /// Where a project is in its life.
    ProjectStatus {
        Draft => "draft",
        Generating => "generating",
        Stitching => "stitching",
        Completed => "completed",
        Failed => "failed",
    }
);

text_enum!(
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

    /// The scene at `index` is out of attempts: it fails, reported as an error of `kind`, and
    /// its project fails with it.
    fn fail_scene(
        &mut self,
        index: usize,
        kind: &'static str,
        message: String,
        effects: &mut Effects,
    ) {
        self.scenes[index].status = SceneStatus::Failed;
        effects.reports.push(Report {
            level: ReportLevel::Error,
            kind,
            message: message.clone(),
        });
        self.fail(effects, message);
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
/// these scenes (in position order, as always), or any more of the project's, and gets the
/// same result as with all of them.
///
/// This rests on how a project moves: its scenes are generated one after another, each from
/// the last frame of the one before, so at any time they are some verified scenes, then at
/// most one in progress, then pending ones (`partial_reads_decide_as_the_whole_project_does`
/// walks every state the machine reaches and checks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScenesRead<'a> {
    /// The project row alone: a stitch that completed.
    Project,
    /// This scene alone: a video callback (a retry starts from the scene's own first frame).
    Scene(&'a str),
    /// This scene and the next one by position, or every scene when this one is the last: a
    /// last-frame callback queues the next scene, or the stitch of every clip.
    SceneAndNext(&'a str),
    /// Every scene: a failed stitch, queued again with every clip.
    All,
}

pub fn scenes_read(callback: &Callback) -> ScenesRead<'_> {
    match callback {
        Callback::Video { scene_id, .. } => ScenesRead::Scene(scene_id.as_str()),
        Callback::LastFrame { scene_id, .. } => ScenesRead::SceneAndNext(scene_id.as_str()),
        Callback::Stitch {
            outcome: Outcome::Completed { .. },
            ..
        } => ScenesRead::Project,
        Callback::Stitch { .. } => ScenesRead::All,
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
                        let message = format!(
                            "Scene {} generation failed after {} attempts: {error}",
                            scene.id, scene.attempts
                        );
                        project.fail_scene(index, "generation", message, &mut effects);
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
                        let message = format!(
                            "Scene {} last-frame extraction failed after {} attempts: {error}",
                            scene.id, scene.extract_attempts
                        );
                        project.fail_scene(index, "processing", message, &mut effects);
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
    use std::collections::{HashSet, VecDeque};

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

    /// Which of `p`'s scenes (by index) a loader hands over for `callback`, as
    /// [`ScenesRead`] tells it to.
    fn scenes_loaded(p: &ProjectState, callback: &Callback) -> Vec<usize> {
        let all = (0..p.scenes.len()).collect();
        let index_of = |id: &str| p.scenes.iter().position(|s| s.id == id);
        match scenes_read(callback) {
            ScenesRead::Project => Vec::new(),
            ScenesRead::Scene(id) => index_of(id).into_iter().collect(),
            ScenesRead::SceneAndNext(id) => match index_of(id) {
                Some(i) if i + 1 < p.scenes.len() => vec![i, i + 1],
                Some(_) => all,
                None => Vec::new(),
            },
            ScenesRead::All => all,
        }
    }

    /// Every callback a project of `scenes` scenes could receive, stale and unknown ones too.
    fn every_callback(scenes: usize) -> Vec<Callback> {
        let mut callbacks = vec![stitch(done("http://final")), stitch(failed())];
        for i in 0..=scenes {
            // Scene `scenes` does not exist.
            let id = format!("s{i}");
            for outcome in [done(&format!("http://v/{i}")), failed()] {
                callbacks.push(video(&id, &format!("t{i}"), outcome.clone()));
                callbacks.push(video(&id, "superseded", outcome));
            }
            callbacks.push(frame(&id, done(&format!("http://f/{i}"))));
            callbacks.push(frame(&id, failed()));
        }
        callbacks
    }

    /// `p` as loaded from the database: nothing changed yet.
    fn as_loaded(mut p: ProjectState) -> ProjectState {
        p.changed = false;
        p.just_completed = false;
        for scene in &mut p.scenes {
            scene.changed = false;
            scene.just_verified = false;
        }
        p
    }

    /// Every state a project of `scenes` scenes reaches through callbacks, operators' starts
    /// and the video service's task ids, from its draft.
    fn reachable_states(scenes: usize, limits: &Limits) -> Vec<ProjectState> {
        let callbacks = every_callback(scenes);
        let mut seen = HashSet::new();
        let mut states = Vec::new();
        let mut queue = VecDeque::from([project(scenes)]);
        while let Some(state) = queue.pop_front() {
            if !seen.insert(format!("{state:?}")) {
                continue;
            }
            let mut next = Vec::new();
            let mut started = state.clone();
            if start_generation(&mut started).is_ok() {
                next.push(started);
            }
            for i in 0..scenes {
                let mut recorded = state.clone();
                if record_video_task(&mut recorded.scenes[i], &format!("t{i}")) {
                    next.push(recorded);
                }
            }
            for callback in &callbacks {
                let mut moved = state.clone();
                if apply_callback(&mut moved, callback, limits).is_ok() {
                    next.push(moved);
                }
            }
            queue.extend(next.into_iter().map(as_loaded));
            states.push(state);
        }
        states
    }

    #[test]
    fn partial_reads_decide_as_the_whole_project_does() {
        // Every step retried once, so that the walk stays small.
        let limits = Limits {
            max_scene_attempts: 2,
            max_extract_attempts: 1,
            max_stitch_attempts: 2,
        };
        let states = reachable_states(3, &limits);
        // The walk goes everywhere: to the end, to failure, and through resumed scenes.
        assert!(states.len() > 1_000, "{} states", states.len());
        assert!(states.iter().any(|p| p.status == ProjectStatus::Completed));
        assert!(states.iter().any(|p| p.status == ProjectStatus::Failed
            && p.scenes.iter().all(|s| s.status == SceneStatus::Verified)));
        let mut partial = 0;
        for state in &states {
            for callback in every_callback(3) {
                let loaded = scenes_loaded(state, &callback);
                partial += usize::from(loaded.len() < state.scenes.len());
                // The scenes read, alone and with any other scene of the project beside them
                // (a batch loads the scenes every callback of the batch reads).
                let others = (0..state.scenes.len()).filter(|i| !loaded.contains(i));
                let reads = std::iter::once(loaded.clone())
                    .chain(others.map(|other| [loaded.clone(), vec![other]].concat()));
                for mut read in reads {
                    read.sort_unstable();
                    let mut whole = state.clone();
                    let mut part = state.clone();
                    part.scenes = read.iter().map(|&i| state.scenes[i].clone()).collect();
                    let on_whole = apply_callback(&mut whole, &callback, &limits);
                    let on_part = apply_callback(&mut part, &callback, &limits);
                    assert_eq!(on_whole, on_part, "{callback:?} on {state:?}");
                    for scene in &part.scenes {
                        assert_eq!(Some(scene), whole.scenes.iter().find(|s| s.id == scene.id));
                    }
                    assert!(
                        whole
                            .scenes
                            .iter()
                            .all(|s| !s.changed || part.scenes.iter().any(|p| p.id == s.id)),
                        "{callback:?} changed a scene it did not read, on {state:?}"
                    );
                    part.scenes = whole.scenes.clone();
                    assert_eq!(part, whole, "{callback:?} on {state:?}");
                }
            }
        }
        assert!(partial > states.len(), "{partial} partial reads");
    }

    #[test]
    fn callbacks_read_only_the_scenes_they_decide_on() {
        assert_eq!(
            scenes_read(&video("s1", "t1", done("http://v/1"))),
            ScenesRead::Scene("s1")
        );
        assert_eq!(
            scenes_read(&frame("s1", done("http://f/1"))),
            ScenesRead::SceneAndNext("s1")
        );
        assert_eq!(
            scenes_read(&stitch(done("http://final"))),
            ScenesRead::Project
        );
        assert_eq!(scenes_read(&stitch(failed())), ScenesRead::All);
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
}
