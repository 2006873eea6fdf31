//! Decides, when the behaviour tests are built, which outside services and tools they can
//! reach, so that a test whose service is missing is reported by libtest as *ignored* (and
//! counted as such in the summary line), never as passed. Each such test carries
//! `#[cfg_attr(not(cw_postgres), ignore = "skipped: …")]` (or the cfg of what it needs).
//!
//! `COURSEWIRE_REQUIRE_SERVICES=1` (what `.ci/run` sets) turns every one on, so a missing
//! service fails its tests instead of skipping them. Services are named by their
//! environment variables; tools are looked for on `PATH` (and the browser at `$CHROMIUM` or
//! `/usr/bin/chromium` with `playwright-core` and `axe-core` under `$COURSEWIRE_NODE_PATH`) — after
//! installing a tool, touch this file or change `PATH` so the tests are built again.
use std::path::Path;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let env = |var: &str| {
        println!("cargo::rerun-if-env-changed={var}");
        std::env::var_os(var).is_some_and(|v| !v.is_empty())
    };
    println!("cargo::rerun-if-env-changed=PATH");
    let on_path = |tool: &str| {
        std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
    };
    let require = std::env::var("COURSEWIRE_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
    println!("cargo::rerun-if-env-changed=COURSEWIRE_REQUIRE_SERVICES");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    println!("cargo::rerun-if-env-changed=CHROMIUM");
    let browser = Path::new(&chromium).is_file()
        && env("COURSEWIRE_NODE_PATH")
        && std::env::var_os("COURSEWIRE_NODE_PATH")
            .is_some_and(|m| ["playwright-core", "axe-core"].iter().all(|p| Path::new(&m).join(p).is_dir()));
    let reachable = [
        ("cw_postgres", env("COURSEWIRE_TEST_DATABASE_URL")),
        ("cw_amqp", env("COURSEWIRE_TEST_AMQP_URL")),
        ("cw_redis", env("COURSEWIRE_TEST_REDIS_URL")),
        ("cw_grpcurl", on_path("grpcurl") && on_path("jq")),
        ("cw_browser", browser),
    ];
    for (cfg, present) in reachable {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if present || require {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
