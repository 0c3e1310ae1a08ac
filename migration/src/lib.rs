//! Schema migrations of the scenehook database; the same migrations run on SQLite and
//! Postgres (a storage setting only Postgres has is skipped on SQLite, a table rebuild only
//! SQLite needs is skipped on Postgres).

pub use sea_orm_migration::{MigrationStatus, prelude::*};

mod m20261129_000001_initial_schema;
mod m20261129_000002_deliveries_by_age;
mod m20261129_000003_scenes_fillfactor;
mod m20261130_000004_deliveries_without_autoincrement;
mod m20261130_000005_fewer_appended_indexes;
mod m20261202_000006_projects_by_status_and_age;

pub struct Migrator;

#[sea_orm_migration::async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261129_000001_initial_schema::Migration),
            Box::new(m20261129_000002_deliveries_by_age::Migration),
            Box::new(m20261129_000003_scenes_fillfactor::Migration),
            Box::new(m20261130_000004_deliveries_without_autoincrement::Migration),
            Box::new(m20261130_000005_fewer_appended_indexes::Migration),
            Box::new(m20261202_000006_projects_by_status_and_age::Migration),
        ]
    }
}
