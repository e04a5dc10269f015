//! `agentkernel serve`: signals, the engine check, the pool, then the server (which
//! starts whether or not the engine answers).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::config::Config;

pub(super) fn serve(config: Config) -> i32 {
    let shutdown = Arc::new(AtomicBool::new(false));
    // The first SIGTERM/SIGINT starts a graceful shutdown; a second one exits at once
    // (128 + the signal, as a shell reports it). Registered in this order, the exit is
    // checked before the flag is set.
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let registered = signal_hook::flag::register_conditional_shutdown(
            signal,
            128 + signal,
            Arc::clone(&shutdown),
        )
        .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&shutdown)));
        if let Err(error) = registered {
            eprintln!("agentkernel: cannot install signal handler: {error}");
            return 1;
        }
    }
    let docker = crate::engine::Docker::new(config.docker_socket.clone(), config.docker_timeout);
    // An engine that does not answer is the server's first look to report
    // (`EngineWatch::first_look`): it serves anyway.
    if let Ok(version) = docker.ping() {
        log::info!(
            "Docker Engine API {version} at {}",
            docker.socket().display()
        );
    }
    let launcher =
        crate::containers::launcher::Launcher::detect(config.stub, config.data_dir.as_deref());
    let pool = crate::containers::pool::Pool::new(
        launcher,
        &config.pool_keys(),
        config.pool_dynamic_size,
        config.pool_max,
    );
    // A keys file that does not parse stops the start, naming its line.
    let tenants = match &config.keys_file {
        Some(path) => match crate::tenants::Tenants::load(path, config.data_dir.as_deref()) {
            Ok(tenants) => {
                log::info!("keys file {}: {} keys", path.display(), tenants.key_count());
                if config.data_dir.is_none() {
                    log::warn!(
                        "no data dir: a tenant removed from the keys file is forgotten at \
                         the next restart (its sandboxes then no longer expire)"
                    );
                }
                tenants
            }
            Err(error) => {
                eprintln!("agentkernel: {error}");
                return 1;
            }
        },
        None => crate::tenants::Tenants::none(),
    };
    let context = Arc::new(crate::server::Context::new(config, docker, pool).with_tenants(tenants));
    match crate::server::serve(context, shutdown) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("agentkernel: {error}");
            1
        }
    }
}

/// `agentkernel egress`: the public policy's host rules, and its network where the
/// engine answers. Exit 0 when the rules are in place.
pub(super) fn egress() -> i32 {
    use crate::containers::egress;
    let config = match Config::from_env(&crate::config::ProcessEnvironment) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("agentkernel: {error}");
            return 1;
        }
    };
    let docker = crate::engine::Docker::new(config.docker_socket.clone(), config.docker_timeout);
    let outcome = match docker.ping() {
        Ok(_) => egress::look(&docker).map(|()| "network and rules"),
        // Before the engine (at boot): the rules, which match the bridge by name.
        Err(_) => egress::install_rules().map(|()| {
            "rules (the engine does not answer: its network is made by the first server)"
        }),
    };
    match outcome {
        Ok(what) => {
            println!("egress: {what} in place");
            0
        }
        Err(error) => {
            eprintln!("agentkernel: {error}");
            1
        }
    }
}
