//! `agentkernel serve`: signals, the engine check, the pool, then the server (which
//! starts whether or not the engine answers).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::config::Config;

pub(super) fn serve(mut config: Config) -> i32 {
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
    if let Some(source) = config.cluster.clone() {
        return route(config, docker, source, shutdown);
    }
    // An engine that does not answer is the server's first look to report
    // (`EngineWatch::first_look`): it serves anyway.
    if let Ok(version) = docker.ping() {
        log::info!(
            "Docker Engine API {version} at {}",
            docker.socket().display()
        );
        // The default runtime, named: what containers get is then known as they are
        // made (gVisor's needs are met whatever makes it the default).
        if let Ok(runtimes) = crate::containers::runtime::available(&docker) {
            match &config.default_runtime {
                None => config.default_runtime = Some(runtimes.default.clone()),
                Some(name) if !runtimes.names.contains(name) => log::error!(
                    "--default-runtime {name}: the engine has no such runtime (it has {}): \
                     containers cannot be made until it does",
                    runtimes.names.join(", ")
                ),
                Some(_) => {}
            }
        }
    }
    crate::containers::disk::configure(config.data_dir.as_deref(), config.disk_quota);
    crate::containers::allow::serve_names(config.egress_resolvers.clone());
    let launcher =
        crate::containers::launcher::Launcher::detect(config.stub, config.data_dir.as_deref());
    let pool = crate::containers::pool::Pool::new(
        launcher,
        &config.pool_keys(),
        config.pool_dynamic_size,
        config.pool_max,
    );
    let tenants = match tenants(&config, config.data_dir.as_deref()) {
        Ok(tenants) => tenants,
        Err(error) => {
            eprintln!("agentkernel: {error}");
            return 1;
        }
    };
    if config.keys_file.is_some() && config.data_dir.is_none() {
        log::warn!(
            "no data dir: a tenant removed from the keys file is forgotten at the next \
             restart (its sandboxes then no longer expire)"
        );
    }
    serve_until_shutdown(
        crate::server::Context::new(config, docker, pool).with_tenants(tenants),
        shutdown,
    )
}

/// The tenants of the keys file (`--keys`), none without one; `data_dir` keeps the
/// namespaces they served. A file that does not parse stops the start, naming its line.
fn tenants(
    config: &Config,
    data_dir: Option<&std::path::Path>,
) -> Result<crate::tenants::Tenants, String> {
    let Some(path) = &config.keys_file else {
        return Ok(crate::tenants::Tenants::none());
    };
    let tenants = crate::tenants::Tenants::load(path, data_dir)?;
    log::info!("keys file {}: {} keys", path.display(), tenants.key_count());
    Ok(tenants)
}

/// Serves until SIGTERM or SIGINT; the process's exit code.
fn serve_until_shutdown(context: crate::server::Context, shutdown: Arc<AtomicBool>) -> i32 {
    match crate::server::serve(Arc::new(context), shutdown) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("agentkernel: {error}");
            1
        }
    }
}

/// `serve --cluster`: a router with no engine, pool or sandboxes of its own; its keys
/// are checked here and sent on to the agents, which check them again.
fn route(
    config: Config,
    docker: crate::engine::Docker,
    source: crate::config::ClusterSource,
    shutdown: Arc<AtomicBool>,
) -> i32 {
    let agents = crate::cluster::Agents::new(source, config.api_key.clone());
    // The keys are checked here too; the namespaces they serve are the agents' to keep.
    let tenants = match tenants(&config, None) {
        Ok(tenants) => tenants,
        Err(error) => {
            eprintln!("agentkernel: {error}");
            return 1;
        }
    };
    let launcher = crate::containers::launcher::Launcher::Exec {
        reason: "a router makes no containers".into(),
    };
    let pool = crate::containers::pool::Pool::new(launcher, &[], 0, 0);
    let context = crate::server::Context::new(config, docker, pool)
        .with_tenants(tenants)
        .with_cluster(agents);
    serve_until_shutdown(context, shutdown)
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
        Ok(_) => egress::look(&docker)
            .and_then(|()| crate::containers::allow::look(&docker))
            .map(|()| "networks and rules"),
        // Before the engine (at boot): the rules, which match the bridges by name.
        Err(_) => egress::install_rules()
            .and_then(|()| crate::containers::allow::install_closed())
            .map(|()| {
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
