//! Request bodies through the API's own routing, request parser and handlers
//! (`routes::parse`, `Request::parse`, `handlers::dispatch`, as a worker runs them): the
//! first byte picks a route, the rest is its body. The engine's socket does not exist, so a
//! body that validates ends in a 503 at its first engine call; whatever the bytes, the
//! answer is a status and an envelope, never a panic. (The HTTP request edge gets its
//! own target with the new server: see fuzz/README.md.)
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use agentkernel::server::handlers::dispatch;
use agentkernel::server::request::Request;
use agentkernel::server::response::status_of;
use agentkernel::server::{routes, Context};
use agentkernel::config::Config;
use agentkernel::engine::Docker;
use agentkernel::containers::launcher::Launcher;
use agentkernel::containers::pool::Pool;
use libfuzzer_sys::fuzz_target;

const ROUTES: &[(&str, &str)] = &[
    ("POST", "/run"),
    ("POST", "/run/stream"),
    ("POST", "/batch/run"),
    ("POST", "/sandboxes"),
    ("POST", "/sandboxes/box/exec"),
    ("POST", "/sandboxes/box/exec/stream"),
    ("POST", "/sandboxes/box/exec/detach"),
    ("POST", "/sandboxes/box/extend"),
    ("PUT", "/sandboxes/box/files/tmp/x"),
    ("POST", "/sandboxes/box/files"),
];

fn context() -> &'static Context {
    static CONTEXT: OnceLock<Context> = OnceLock::new();
    CONTEXT.get_or_init(|| {
        let config = Config {
            docker_socket: "/nonexistent/agentkernel-fuzz.sock".into(),
            data_dir: Some(std::env::temp_dir().join("agentkernel-fuzz-history")),
            ..Config::default()
        };
        let docker = Docker::new(config.docker_socket.clone(), Duration::from_millis(100));
        let pool = Pool::local(Launcher::detect(false));
        Context::new(config, docker, pool)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let (method, url) = ROUTES[usize::from(selector) % ROUTES.len()];
    let route = routes::parse(method, url).expect("a routed sample");
    let answer = Request::parse(route, body).and_then(|request| dispatch(context(), request));
    let status = match answer {
        Ok(reply) => reply.status,
        Err(error) => status_of(&error).0,
    };
    // Nothing is reachable: a valid body fails at the engine (503), an invalid one is
    // a 400. A batch is a 200 whatever its entries do: each failure is its own result.
    let batch = url == "/batch/run";
    assert!(
        matches!(status, 400 | 503) || (batch && status == 200),
        "{method} {url}: {status}"
    );
});
