//! The `coursewire` command's library side: the application assembled in one place (`app`),
//! shared by the binary, the behaviour tests and the benchmarks, and the CLI.
pub mod app;
pub mod cli;
