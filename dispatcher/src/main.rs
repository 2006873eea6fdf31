//! `coursewire-dispatcher`: the webhook dispatcher as its own process.
fn main() -> std::process::ExitCode {
    eprintln!(
        "coursewire-dispatcher: the webhook delivery pipeline is not built yet; run `coursewire` (all-in-one) meanwhile"
    );
    std::process::ExitCode::FAILURE
}
