//! The HTTP server: a tiny_http accept loop feeding a bounded crossbeam channel that a
//! fixed pool of named worker threads serves.
//!
//! Invariants: only this module (and its children) knows tiny_http and status codes;
//! the queue is bounded and a full queue answers 503 at once, from the accept loop;
//! every request is answered, with a JSON envelope, exactly once (a panic in a handler
//! becomes a 500 and the worker lives on); a request is routed before its body is read,
//! and bodies over the route's limit are refused from their declared length before being
//! read; API keys and bodies are never logged.

pub mod events;
pub mod handlers;
pub mod response;
pub mod routes;
pub mod views;

use std::io::{Cursor, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, TrySendError};
use tiny_http::{Header, Request, Response, Server};

use crate::config::Config;
use crate::docker::Docker;
use crate::history::History;
use crate::pool::Pool;

use self::response::{ApiError, Reply};
use self::routes::Route;

/// What every handler may use.
pub struct Context {
    pub config: Config,
    pub docker: Docker,
    pub pool: Pool,
    pub history: History,
}

impl Context {
    pub fn new(config: Config, docker: Docker, pool: Pool) -> Context {
        let history = History::new(
            config.data_dir.clone(),
            &config.namespace,
            config.history_max_bytes,
        );
        Context {
            config,
            docker,
            pool,
            history,
        }
    }
}

/// A request as handlers see it: no tiny_http types.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: String,
    pub url: String,
    pub api_key: Option<String>,
    pub body: Vec<u8>,
}

/// Binds, serves until `shutdown` turns true, then drains and cleans up.
pub fn serve(context: Arc<Context>, shutdown: Arc<AtomicBool>) -> Result<(), String> {
    let config = &context.config;
    let address = format!("{}:{}", config.host, config.port);
    let server = listen(&address, config.client_timeout)
        .map_err(|error| format!("cannot listen on {address}: {error}"))?;
    // Only once the port is ours: a second server started by mistake on the same port
    // must fail before it touches the first one's containers.
    crate::sweep::remove_temporary(&context.docker, &context.config);
    let local = server
        .server_addr()
        .to_ip()
        .map(|a| a.to_string())
        .unwrap_or(address.clone());
    log::info!(
        "listening on http://{local} (namespace '{}', {} workers, queue {}, engine {})",
        config.namespace.as_str(),
        config.workers,
        config.queue,
        config.docker_socket.display()
    );
    if config.api_key.is_none() && config.host != "127.0.0.1" && config.host != "localhost" {
        log::warn!(
            "listening on {} without AGENTKERNEL_API_KEY: anyone who can reach it can run commands",
            config.host
        );
    }

    let refill = {
        let context = Arc::clone(&context);
        std::thread::Builder::new()
            .name("pool-refill".into())
            .spawn(move || context.pool.refill_loop(&context.docker, &context.config))
            .map_err(|error| format!("cannot start pool thread: {error}"))?
    };
    let reaper = {
        let context = Arc::clone(&context);
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || context.pool.reap_loop(&context.docker))
            .map_err(|error| format!("cannot start reaper thread: {error}"))?
    };

    let (sender, receiver) = bounded::<Request>(config.queue);
    let (done_sender, done_receiver) = bounded::<()>(config.workers);
    let mut workers = Vec::new();
    for index in 0..config.workers {
        let receiver: Receiver<Request> = receiver.clone();
        let context = Arc::clone(&context);
        let done = done_sender.clone();
        let handle = std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || {
                for request in receiver {
                    serve_one(&context, request);
                }
                let _ = done.send(());
            })
            .map_err(|error| format!("cannot start worker thread: {error}"))?;
        workers.push(handle);
    }
    drop(done_sender);

    let keeper = {
        let shutdown = Arc::clone(&shutdown);
        let address = server.server_addr().to_ip();
        let timeout = config.client_timeout;
        std::thread::Builder::new()
            .name("accept-keeper".into())
            .spawn(move || {
                if let Some(address) = address {
                    keep_accepting(address, timeout, &shutdown);
                }
            })
            .map_err(|error| format!("cannot start the accept keeper: {error}"))?
    };
    let mut accept_failure = None;
    while !shutdown.load(Ordering::SeqCst) {
        let request = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(error) => {
                // tiny_http's accept thread is gone: nothing will be accepted again.
                // Crash-only: stop cleanly and exit non-zero for a supervisor to see.
                log::error!("the accept loop ended: {error}; shutting down");
                accept_failure = Some(error.to_string());
                shutdown.store(true, Ordering::SeqCst);
                break;
            }
        };
        match sender.try_send(request) {
            Ok(()) => {}
            Err(TrySendError::Full(request)) => {
                log::warn!("{} {} 503 (queue full)", request.method(), request.url());
                respond(request, &ApiError::Busy.reply());
            }
            Err(TrySendError::Disconnected(request)) => {
                respond(request, &ApiError::Panic.reply());
            }
        }
    }

    log::info!("shutting down: finishing in-flight requests");
    drop(sender);
    let deadline = Instant::now() + config.shutdown_grace;
    let mut finished = 0;
    while finished < workers.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match done_receiver.recv_timeout(left) {
            Ok(()) => finished += 1,
            Err(_) => {
                log::warn!(
                    "{} workers still busy after {:?}; exiting without them",
                    workers.len() - finished,
                    config.shutdown_grace
                );
                break;
            }
        }
    }
    if finished == workers.len() {
        for worker in workers {
            let _ = worker.join();
        }
    }
    drop(server);
    context.pool.shut_down(&context.docker);
    let _ = refill.join();
    let _ = reaper.join();
    crate::sweep::remove_temporary(&context.docker, &context.config);
    let _ = keeper.join();
    log::info!("stopped");
    match accept_failure {
        Some(error) => Err(format!("the accept loop ended: {error}")),
        None => Ok(()),
    }
}

/// Reads, handles and answers one request; never panics, always answers.
fn serve_one(context: &Context, mut request: Request) {
    let started = Instant::now();
    let method = request.method().as_str().to_string();
    let url = request.url().to_string();
    let reply = match read_request(context, &mut request) {
        Ok((api_request, route)) => guarded(|| dispatch(context, route, &api_request.body)),
        Err(error) => error.reply(),
    };
    let path = url.split('?').next().unwrap_or(&url).to_string();
    let status = match reply.stream {
        Some(job) => events::stream(context, request.into_writer(), job),
        None => {
            let status = reply.status;
            respond(request, &reply);
            status
        }
    };
    log::info!(
        "{method} {path} {status} {}ms",
        started.elapsed().as_millis()
    );
}

/// Binds the listener with receive and send timeouts that every accepted connection
/// inherits (Linux copies them from the listening socket): a client that stops
/// sending (headers, a body) or reading (a large answer, an event stream) cannot hold
/// a connection thread or a worker for ever.
///
/// On a listening socket the receive timeout also bounds `accept`, and tiny_http's
/// accept thread ends at its first error; `keep_accepting` therefore connects to the
/// listener well within the timeout, so that `accept` never waits that long.
fn listen(address: &str, timeout: Duration) -> Result<Server, String> {
    use rustix::net::sockopt::{set_socket_timeout, Timeout};
    let listener = std::net::TcpListener::bind(address).map_err(|error| error.to_string())?;
    for kind in [Timeout::Recv, Timeout::Send] {
        set_socket_timeout(&listener, kind, Some(timeout)).map_err(|error| error.to_string())?;
    }
    Server::from_listener(listener, None).map_err(|error| error.to_string())
}

/// The `accept-keeper` thread: a connection to our own listener every third of the
/// client timeout, opened and closed at once, until shutdown.
fn keep_accepting(address: std::net::SocketAddr, timeout: Duration, shutdown: &AtomicBool) {
    let mut target = address;
    if target.ip().is_unspecified() {
        target.set_ip(match target {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let pause = (timeout / 3).max(Duration::from_millis(100));
    let mut slept = Duration::ZERO;
    while !shutdown.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        slept += Duration::from_millis(100);
        if slept >= pause {
            slept = Duration::ZERO;
            if let Err(error) = std::net::TcpStream::connect_timeout(&target, timeout) {
                log::warn!("accept-keeper: cannot reach our own listener: {error}");
            }
        }
    }
}

/// Runs a handler so that a panic becomes a 500 answer and the worker lives on.
fn guarded(handler: impl FnOnce() -> Result<Reply, ApiError>) -> Reply {
    match catch_unwind(AssertUnwindSafe(handler)) {
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => error.reply(),
        Err(_) => {
            log::error!("request handler panicked");
            ApiError::Panic.reply()
        }
    }
}

/// Checks the key, routes the request, and reads its body within the route's limit.
fn read_request(context: &Context, request: &mut Request) -> Result<(ApiRequest, Route), ApiError> {
    let mut api_key = None;
    for header in request.headers() {
        let field = header.field.as_str().as_str();
        if field.eq_ignore_ascii_case("x-api-key") {
            api_key = Some(header.value.as_str().to_string());
        } else if field.eq_ignore_ascii_case("authorization") && api_key.is_none() {
            let value = header.value.as_str();
            // The scheme name is case-insensitive (RFC 9110).
            if let Some((scheme, token)) = value.split_once(' ') {
                if scheme.eq_ignore_ascii_case("bearer") {
                    api_key = Some(token.trim().to_string());
                }
            }
        }
    }
    if let Some(expected) = &context.config.api_key {
        let given = api_key.as_deref().unwrap_or_default();
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return Err(ApiError::Unauthorized);
        }
    }
    // Routed before the body is read: the route decides the body's limit.
    let route = routes::parse(request.method().as_str(), request.url())?;
    let limit = body_limit(&context.config, &route);
    if request
        .body_length()
        .is_some_and(|length| length as u64 > limit)
    {
        return Err(ApiError::BodyTooLarge { limit });
    }
    // Each read is bounded by the socket's timeout, the whole body by the same time:
    // a client dribbling a byte at a time cannot hold a worker.
    let give_up = Instant::now() + context.config.client_timeout;
    let mut body = Vec::new();
    let mut reader = request.as_reader().take(limit + 1);
    let mut buffer = [0u8; 16 * 1024];
    loop {
        if Instant::now() > give_up {
            return Err(ApiError::BadBody(
                "request body took too long to arrive".into(),
            ));
        }
        match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => body.extend_from_slice(&buffer[..count]),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => {
                return Err(ApiError::BadBody(format!(
                    "could not read request body: {error}"
                )))
            }
        }
    }
    if body.len() as u64 > limit {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let api_request = ApiRequest {
        method: request.method().as_str().to_string(),
        url: request.url().to_string(),
        api_key,
        body,
    };
    Ok((api_request, route))
}

/// The largest body a route accepts: file uploads carry a whole file (in base64), every
/// other body is small.
fn body_limit(config: &Config, route: &Route) -> u64 {
    match route {
        Route::PutSandboxFile(..) | Route::PostSandboxFiles(_) => config.max_upload_body_bytes(),
        _ => config.max_body_bytes,
    }
}

/// Routes a request and runs its handler (for callers that did not route it yet, as
/// the command line's local mode).
pub fn handle(context: &Context, request: &ApiRequest) -> Result<Reply, ApiError> {
    let route = routes::parse(&request.method, &request.url)?;
    dispatch(context, route, &request.body)
}

/// Runs the handler of a routed request: the single `match` from route to handler.
fn dispatch(context: &Context, route: Route, body: &[u8]) -> Result<Reply, ApiError> {
    use handlers::*;
    match route {
        Route::OpenApi => get_openapi(context),
        Route::Health => get_health(context),
        Route::Pool => get_pool(context),
        Route::Backends => get_backends(context),
        Route::GetSandboxByUuid(uuid) => get_sandbox_by_uuid(context, &uuid),
        Route::ExtendSandbox(name) => post_sandbox_extend(context, &name, body),
        Route::Run => post_run(context, body),
        Route::RunStream => post_run_stream(context, body),
        Route::BatchRun => post_batch_run(context, body),
        Route::ListSandboxes => get_sandboxes(context),
        Route::CreateSandbox => post_sandboxes(context, body),
        Route::GetSandbox(name) => get_sandbox(context, &name),
        Route::DeleteSandbox(name) => delete_sandbox(context, &name),
        Route::ExecSandbox(name) => post_sandbox_exec(context, &name, body),
        Route::ExecSandboxStream(name) => post_sandbox_exec_stream(context, &name, body),
        Route::ExecDetach(name) => post_sandbox_exec_detach(context, &name, body),
        Route::DetachedList(name) => get_detached_list(context, &name),
        Route::DetachedStatus(name, id) => get_detached(context, &name, &id),
        Route::DetachedKill(name, id) => delete_detached(context, &name, &id),
        Route::DetachedLogs {
            sandbox,
            id,
            stderr_only,
        } => get_detached_logs(context, &sandbox, &id, stderr_only),
        Route::StartSandbox(name) => post_sandbox_start(context, &name),
        Route::StopSandbox(name) => post_sandbox_stop(context, &name),
        Route::SandboxLogs(name) => get_sandbox_logs(context, &name),
        Route::GetSandboxFile(name, path) => get_sandbox_file(context, &name, &path),
        Route::PutSandboxFile(name, path) => put_sandbox_file(context, &name, &path, body),
        Route::DeleteSandboxFile(name, path) => delete_sandbox_file(context, &name, &path),
        Route::PostSandboxFiles(name) => post_sandbox_files(context, &name, body),
    }
}

fn respond(request: Request, reply: &Reply) {
    let mut response = Response::new(
        tiny_http::StatusCode(reply.status),
        vec![Header::from_bytes("Content-Type", "application/json").expect("valid header")],
        Cursor::new(reply.bytes()),
        None,
        None,
    );
    for (name, value) in &reply.headers {
        if let Ok(header) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(header);
        }
    }
    if let Err(error) = request.respond(response) {
        log::debug!("could not send response: {error}");
    }
}

/// Compares without an early exit, so the time taken does not reveal how much of a
/// guessed key was right.
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = (given.len() != expected.len()) as u8;
    for (index, byte) in expected.iter().enumerate() {
        difference |= byte ^ given.get(index).copied().unwrap_or(!byte);
    }
    difference == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_handler_becomes_a_json_500() {
        let reply = guarded(|| panic!("boom"));
        assert_eq!(reply.status, 500);
        assert_eq!(reply.body["success"], serde_json::json!(false));
        let reply = guarded(|| Err(ApiError::Busy));
        assert_eq!(reply.status, 503);
    }

    #[test]
    fn compares_keys_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret1", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(!constant_time_eq(b"secret", b""));
    }
}
