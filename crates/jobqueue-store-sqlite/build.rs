//! `embed_migrations!` reads `migrations/` when the crate compiles, and
//! Cargo notices changes to the files it read but not a migration added
//! beside them. This makes any change under `migrations/` rebuild the
//! crate, so a new migration is never left out of a build.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
