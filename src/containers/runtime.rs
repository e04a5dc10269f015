//! Engine runtimes: which program runs a container (`runc`, or gVisor's `runsc` for
//! the least trusted code, where the engine has it registered). The engine's info says
//! which exist; a request names one, or gets the server's default (`--default-runtime`),
//! else the engine's.
//!
//! A request may name only what the operator allows (`--runtimes`; by default the
//! server's default and gVisor's, a stronger boundary: never a weaker or an
//! operator-only one, and never `runc` to leave gVisor on a server whose default it
//! is). A pool key carries the runtime a request resolved to (`None`: the server's
//! default), so that warm containers of one runtime never serve a request for another.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::engine::Docker;
use crate::error::{Error, Result};

/// How long an answer of the engine about its runtimes is kept.
const KEPT: Duration = Duration::from_secs(5);

/// The engine's runtimes (sorted) and its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtimes {
    pub names: Vec<String>,
    pub default: String,
}

/// The engine's runtimes whose program is gVisor's, whatever their name (the last
/// answer of the engine).
static GVISOR: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub use crate::engine::valid_runtime_name as valid_name;

/// The engine's runtimes, asked at most every few seconds.
pub fn available(docker: &Docker) -> Result<Runtimes> {
    static CACHE: Mutex<Option<(Instant, Runtimes)>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, runtimes)) = &*cache {
        if at.elapsed() < KEPT {
            return Ok(runtimes.clone());
        }
    }
    let info = docker.engine_info().map_err(Error::Engine)?;
    *GVISOR.lock().unwrap_or_else(|e| e.into_inner()) = info.gvisor.clone();
    let mut names = info.runtimes;
    names.sort();
    let runtimes = Runtimes {
        names,
        default: if info.default_runtime.is_empty() {
            "runc".to_string()
        } else {
            info.default_runtime
        },
    };
    *cache = Some((Instant::now(), runtimes.clone()));
    Ok(runtimes)
}

/// The runtime a request gets, as a pool key holds it: `None` for the server's default
/// (what it asked for, when it named that one), else the one it named. One the engine
/// does not have is a 400 naming those it has.
pub fn resolve(
    docker: &Docker,
    config: &Config,
    requested: Option<&str>,
) -> Result<Option<String>> {
    let Some(requested) = requested else {
        return Ok(None);
    };
    let runtimes = available(docker)?;
    check(&runtimes, requested)?;
    let default = config
        .default_runtime
        .as_deref()
        .unwrap_or(&runtimes.default);
    if !allowed(config, default, requested) {
        return Err(Error::Forbidden(format!(
            "runtime '{requested}' is not allowed on this server (it allows {})",
            allowed_list(config, default).join(", ")
        )));
    }
    Ok((requested != default).then(|| requested.to_string()))
}

/// Whether a request may name `name`: the operator's list, else the default and
/// gVisor's.
pub fn allowed(config: &Config, default: &str, name: &str) -> bool {
    match &config.runtimes {
        Some(list) => list.iter().any(|allowed| allowed == name),
        None => name == default || is_gvisor(Some(name)),
    }
}

fn allowed_list(config: &Config, default: &str) -> Vec<String> {
    match &config.runtimes {
        Some(list) => list.clone(),
        None => vec![default.to_string(), "runsc".to_string()],
    }
}

/// The runtimes `GET /backends` lists: the engine's that requests may name.
pub fn offered(config: &Config, runtimes: &Runtimes) -> Vec<String> {
    let default = config
        .default_runtime
        .as_deref()
        .unwrap_or(&runtimes.default);
    runtimes
        .names
        .iter()
        .filter(|name| allowed(config, default, name))
        .cloned()
        .collect()
}

/// An error unless the engine has `name`.
pub fn check(runtimes: &Runtimes, name: &str) -> Result<()> {
    if runtimes.names.iter().any(|known| known == name) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "runtime '{name}' is not available: the engine has {}",
        runtimes.names.join(", ")
    )))
}

/// gVisor's pids: its sandbox's own threads count against the container's pids limit
/// (about 40 idle, 175 after some use, measured here): a limit under that kills the
/// sandbox at the command's first fork. They are added to the profile's.
pub const GVISOR_PIDS: i64 = 256;

/// Whether a runtime is gVisor's (`runsc`, or a variant registered as `runsc-...`).
pub fn is_gvisor(name: Option<&str>) -> bool {
    crate::engine::is_gvisor_name(name)
        || name.is_some_and(|name| {
            GVISOR
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|gvisor| gvisor == name)
        })
}

/// What a container under gVisor needs besides its profile's settings: room in its pids
/// limit for gVisor's own threads, and `/tmp` as a tmpfs of ours (gVisor keeps its own,
/// unbounded and out of the files API's reach, where the container has none).
pub fn adapt(host: &mut crate::engine::HostSettings, tmp_options: &str) {
    if !is_gvisor(host.runtime.as_deref()) {
        return;
    }
    host.pids_limit += GVISOR_PIDS;
    host.tmpfs
        .entry("/tmp".to_string())
        .or_insert_with(|| tmp_options.to_string());
}

/// The runtime a container of this key's runtime runs under, named: the key's, the
/// server's default, else the engine's (asked: an engine whose own default is gVisor
/// makes gVisor containers too).
pub fn effective(docker: &Docker, config: &Config, runtime: &Option<String>) -> Option<String> {
    setting(config, runtime).or_else(|| available(docker).ok().map(|runtimes| runtimes.default))
}

/// The engine's `Runtime` setting for a container of this key's runtime: the one it
/// names, else the server's default (`None`: the engine's own).
pub fn setting(config: &Config, runtime: &Option<String>) -> Option<String> {
    runtime.clone().or_else(|| config.default_runtime.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtimes() -> Runtimes {
        Runtimes {
            names: vec![
                "io.containerd.runc.v2".into(),
                "runc".into(),
                "runsc".into(),
            ],
            default: "runc".into(),
        }
    }

    #[test]
    fn a_runtime_the_engine_lacks_is_refused_naming_those_it_has() {
        assert!(check(&runtimes(), "runsc").is_ok());
        let error = check(&runtimes(), "kata").unwrap_err().to_string();
        assert_eq!(
            error,
            "runtime 'kata' is not available: the engine has io.containerd.runc.v2, runc, runsc"
        );
    }

    #[test]
    fn names_are_what_the_engine_accepts() {
        for good in ["runc", "runsc", "io.containerd.runc.v2", "kata-qemu", "a_b"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "run c", "../runc", "runc\0", &"r".repeat(65), "rünc"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn requests_name_the_default_or_gvisor_unless_the_operator_lists_others() {
        let mut config = Config::default();
        // A gVisor server: runc (or its long name) would leave gVisor.
        for (name, allowed_here) in [
            ("runsc", true),
            ("runc", false),
            ("io.containerd.runc.v2", false),
            ("kata", false),
        ] {
            assert_eq!(allowed(&config, "runsc", name), allowed_here, "{name}");
        }
        // A runc server: the default, and gVisor's stronger boundary.
        assert!(allowed(&config, "runc", "runc"));
        assert!(allowed(&config, "runc", "runsc"));
        assert!(!allowed(&config, "runc", "sysbox-runc"));
        config.runtimes = Some(vec!["runc".into(), "kata".into()]);
        assert!(allowed(&config, "runsc", "kata"));
        assert!(!allowed(&config, "runsc", "runsc"));
        let runtimes = Runtimes {
            names: vec!["kata".into(), "runc".into(), "runsc".into()],
            default: "runc".into(),
        };
        assert_eq!(offered(&config, &runtimes), ["kata", "runc"]);
    }

    #[test]
    fn the_setting_is_the_named_runtime_else_the_servers_default() {
        let mut config = Config::default();
        assert_eq!(setting(&config, &None), None);
        assert_eq!(
            setting(&config, &Some("runsc".into())),
            Some("runsc".into())
        );
        config.default_runtime = Some("runsc".into());
        assert_eq!(setting(&config, &None), Some("runsc".into()));
        assert_eq!(setting(&config, &Some("runc".into())), Some("runc".into()));
    }
}
