//! SeaORM entities of the scenehook database. The schema itself lives in the `migration`
//! crate; these models mirror it one to one.

pub mod outbox_job;
pub mod project;
pub mod scene;
pub mod webhook_delivery;
