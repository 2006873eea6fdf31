//! Coursewire benchmarks: each scenario prints JSON lines with a baseline measured in the
//! same run (ARCHITECTURE §10).
fn main() -> std::process::ExitCode {
    eprintln!("usage: coursewire-bench SCENARIO (scenarios are added with their issues)");
    std::process::ExitCode::FAILURE
}
