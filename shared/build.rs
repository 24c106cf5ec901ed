//! Rebuilds this crate when `migrations/` changes: `refinery::embed_migrations!` reads the
//! directory at compile time, and Cargo tracks only the files it found, so a new migration
//! alone would leave a build that does not apply it.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
