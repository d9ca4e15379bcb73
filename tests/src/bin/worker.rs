//! The kill tests' child process (filled below).
fn main() {}
