//! The HTTP server: an accept loop, one `conn` thread per open client connection (a
//! bounded number of them) that reads requests under the edge's bounds, and a fixed
//! pool of named worker threads, fed through a bounded crossbeam channel, that runs the
//! handlers.
//!
//! Invariants: only this module (and its children) knows HTTP and status codes; the
//! queue is bounded and a full queue answers 503 at once; at most `max_connections`
//! connections are open (past it: 503 and close, at once); a worker only ever sees a
//! request whose head and body have fully arrived, so a slow client holds its own
//! `conn` thread, never a worker; every request is answered, with a JSON envelope,
//! exactly once (a panic in a handler becomes a 500; a panic anywhere else closes that
//! connection; neither costs a worker); a request is authenticated and routed before
//! its body is read, and an answer given before reading a body closes the connection
//! rather than wait for it; API keys and bodies are never logged; the accept loop ends
//! only on shutdown.

pub mod handlers;
pub mod http;
pub mod metrics;
pub mod request;
pub mod response;
pub mod router;
pub mod routes;
pub mod sse;
pub mod views;

use std::net::{TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvError, RecvTimeoutError, Sender, TrySendError};

use std::borrow::Cow;

use crate::config::{Config, Namespace};
use crate::containers::pool::Pool;
use crate::containers::watch::EngineWatch;
use crate::engine::Docker;
use crate::exec::{Cancel, OutputMemory};
use crate::history::History;

use self::http::{Answer, BodyError, Connection, Framing, Head, HeadError, Limits, PacedWriter};
use self::request::Request;
use self::response::{ApiError, Reply};
use self::routes::Route;

/// What every handler may use.
pub struct Context {
    pub config: Config,
    pub docker: Docker,
    pub pool: Pool,
    pub history: History,
    /// Counters of the HTTP edge, for `/health`.
    pub edge: EdgeStats,
    /// Whether the engine answers, kept by the `engine-watch` thread (for `/health`).
    pub engine: EngineWatch,
    /// The output all requests hold at once (`output_memory_limit`).
    pub output_memory: Arc<OutputMemory>,
    /// Sandboxes' ttls, extensions and activity (the `expiry` thread's).
    pub expiry: crate::expiry::Expiry,
    /// What `GET /metrics` counts.
    pub metrics: metrics::Metrics,
    /// The keys file's keys and namespaces, and what their quotas count.
    pub tenants: crate::tenants::Tenants,
    /// In cluster mode (`serve --cluster`), the agents every request goes on to: then
    /// this server has no engine, pool or sandboxes of its own (`router`).
    pub cluster: Option<Arc<crate::cluster::Agents>>,
}

impl Context {
    /// With the tenants of a keys file (`--keys`).
    pub fn with_tenants(mut self, tenants: crate::tenants::Tenants) -> Context {
        self.tenants = tenants;
        self
    }

    /// As a cluster's router, sending requests on to `agents`.
    pub fn with_cluster(mut self, agents: crate::cluster::Agents) -> Context {
        self.cluster = Some(Arc::new(agents));
        self
    }

    /// The configuration a request of `namespace` works in: the server's, with that
    /// namespace (what sandboxes, snapshots, volumes and history it sees).
    /// A tenant's `max_network` narrows the server's.
    pub fn config_in(&self, namespace: &Namespace) -> Cow<'_, Config> {
        let max_network = match self.tenants.quotas(namespace).max_network {
            Some(network) => network.min(self.config.max_network),
            None => self.config.max_network,
        };
        if *namespace == self.config.namespace && max_network == self.config.max_network {
            Cow::Borrowed(&self.config)
        } else {
            Cow::Owned(Config {
                namespace: namespace.clone(),
                max_network,
                ..self.config.clone()
            })
        }
    }

    pub fn new(config: Config, docker: Docker, pool: Pool) -> Context {
        let history = History::new(config.data_dir.clone(), config.history_max_bytes);
        Context {
            edge: EdgeStats::default(),
            engine: EngineWatch::new(),
            output_memory: OutputMemory::new(output_memory_limit(&config)),
            expiry: crate::expiry::Expiry::new(&config),
            metrics: metrics::Metrics::default(),
            tenants: crate::tenants::Tenants::none(),
            cluster: None,
            config,
            docker,
            pool,
            history,
        }
    }
}

/// The output memory in force: the configured one, but room for at least one
/// request's whole budget, one read of the largest file and one read of the largest
/// detached logs, so that each of them can be served alone.
pub fn output_memory_limit(config: &Config) -> u64 {
    config
        .max_output_memory_bytes
        .max(config.max_request_output_bytes)
        .max(crate::files::read_memory_bound(config))
        .max(crate::detached::LOGS_MEMORY_BYTES)
}

/// What the edge counts: live workers and open connections.
#[derive(Debug, Default)]
pub struct EdgeStats {
    pub workers_alive: AtomicUsize,
    pub connections: AtomicUsize,
    /// The connection limit in force (the configured one, lowered to fit the
    /// open-files limit); 0 until the server listens.
    pub max_connections: AtomicUsize,
    /// Request-body bytes held (or promised to bodies on their way) right now, and the
    /// most there may be (`Config::body_memory_budget`).
    pub body_bytes: AtomicU64,
    pub body_budget: AtomicU64,
}

/// A request body's share of the body memory budget, given back when dropped (with
/// the body, once it is parsed).
struct BodyLease {
    context: Arc<Context>,
    bytes: u64,
}

impl BodyLease {
    fn new(context: Arc<Context>) -> BodyLease {
        BodyLease { context, bytes: 0 }
    }

    /// Holds `bytes` in all, taking what is missing from the budget; false (and
    /// nothing taken) if that does not fit.
    fn grow_to(&mut self, bytes: u64) -> bool {
        let Some(more) = bytes.checked_sub(self.bytes).filter(|more| *more > 0) else {
            return true;
        };
        let edge = &self.context.edge;
        let budget = edge.body_budget.load(Ordering::SeqCst);
        let taken = edge
            .body_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(more).filter(|total| *total <= budget)
            })
            .is_ok();
        if taken {
            self.bytes = bytes;
        }
        taken
    }

    /// Gives back what a body turned out not to need.
    fn shrink_to(&mut self, bytes: u64) {
        if bytes < self.bytes {
            self.context
                .edge
                .body_bytes
                .fetch_sub(self.bytes - bytes, Ordering::SeqCst);
            self.bytes = bytes;
        }
    }
}

impl Drop for BodyLease {
    fn drop(&mut self) {
        self.context
            .edge
            .body_bytes
            .fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// How long a closing connection reads and drops what its client still sends (see
/// `Connection::linger_close`): long enough for a client that writes a whole body
/// before it reads our early answer, even on a busy machine.
const LINGER: Duration = Duration::from_secs(1);
/// The `refuser` thread lingers less (and not at all while others wait): it serves
/// every refused connection in turn.
const REFUSED_LINGER: Duration = Duration::from_millis(100);
/// Connections over the limit waiting for the `refuser`; past it they are closed unanswered.
const REFUSER_QUEUE: usize = 64;
/// How long the clean-up after the drain (removing the warm pool and our temporary
/// containers) may take at least, and at most until how long after the signal, before
/// the process exits without it: with the default drain timeout, the process is gone
/// within 10 s of SIGTERM.
const CLEANUP_BUDGET: Duration = Duration::from_secs(4);
const EXIT_WITHIN: Duration = Duration::from_secs(9);

/// A request whose head and body have arrived, on its way to a worker with the
/// connection to answer on.
struct Job {
    route: Route,
    /// Whose request it is: the namespace its key selects.
    namespace: Namespace,
    body: Vec<u8>,
    head: Head,
    connection: Connection,
    done: Sender<Handled>,
    /// Cancelled by the connection's thread when the client hangs up before its answer.
    cancel: Cancel,
    /// The body's share of the body memory budget: given back once it is parsed.
    lease: BodyLease,
    /// The server's shutdown flag: an answer relayed after it began closes its
    /// connection.
    stopping: Arc<AtomicBool>,
}

/// What a worker hands back to the connection's thread.
enum Handled {
    /// An answer for the connection's thread to write.
    Reply(Connection, Box<Reply>),
    /// An event stream the worker wrote itself; the connection is closed.
    Streamed(u16),
    /// An agent's answer the worker relayed whole; the connection may serve the
    /// client's next request.
    Relayed(Connection, u16),
}

/// Where threads of the server find what they share.
struct Shared {
    context: Arc<Context>,
    jobs: Sender<Job>,
    limits: Limits,
    shutdown: Arc<AtomicBool>,
}

/// Binds, serves until `shutdown` turns true, then drains and cleans up.
pub fn serve(context: Arc<Context>, shutdown: Arc<AtomicBool>) -> Result<(), String> {
    let config = &context.config;
    let address = format!("{}:{}", config.host, config.port);
    let listener =
        listen(&address).map_err(|error| format!("cannot listen on {address}: {error}"))?;
    // Our lease, held until we return (and by the kernel until this process ends): how
    // other processes of the namespace tell that our containers' owner still runs.
    // A cluster's router has no engine, containers or sandboxes of its own.
    let with_engine = context.cluster.is_none();
    let lease = if with_engine {
        take_lease(config)
    } else {
        None
    };
    // Only once the port is ours: a second server started by mistake on the same port
    // must fail before it touches the first one's containers. With the engine down,
    // the start-up sweep waits for it (`engine-watch`).
    if with_engine {
        context
            .engine
            .first_look(&context.docker, &context.config, &context.pool);
    }
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or(address.clone());
    let max_connections = connection_limit(config);
    context
        .edge
        .max_connections
        .store(max_connections, Ordering::SeqCst);
    context
        .edge
        .body_budget
        .store(config.body_memory_budget(), Ordering::SeqCst);
    let backend = match &context.cluster {
        Some(_) => "a cluster's router".to_string(),
        None => format!("engine {}", config.docker_socket.display()),
    };
    log::info!(
        "listening on http://{local} (namespace '{}', {} workers, queue {}, {} connections, {backend})",
        config.namespace.as_str(),
        config.workers,
        config.queue,
        max_connections,
    );
    if context.tenants.enabled() {
        // SIGHUP re-reads the keys file (the flag is looked at by `keys-reload`).
        let hangup = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hangup))
            .map_err(|error| format!("cannot install the SIGHUP handler: {error}"))?;
        let context = Arc::clone(&context);
        let shutdown = Arc::clone(&shutdown);
        spawn("keys-reload", move || {
            while !shutdown.load(Ordering::SeqCst) {
                if hangup.swap(false, Ordering::SeqCst) {
                    match context.tenants.reload() {
                        Ok(count) => log::info!("keys file read again: {count} keys"),
                        Err(error) => log::error!("{error}; the keys in force stay"),
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })?;
    } else if config.api_key.is_none() && config.host != "127.0.0.1" && config.host != "localhost" {
        log::warn!(
            "listening on {} without AGENTKERNEL_API_KEY: anyone who can reach it can run commands",
            config.host
        );
    }

    let joinable = match &context.cluster {
        Some(agents) => {
            let agents = Arc::clone(agents);
            let shutdown = Arc::clone(&shutdown);
            vec![spawn("cluster-watch", move || agents.watch(&shutdown))?]
        }
        None => engine_threads(&context, &shutdown)?,
    };

    let (jobs, receiver) = bounded::<Job>(config.queue);
    let (done_sender, done_receiver) = bounded::<()>(config.workers * 2);
    for index in 0..config.workers {
        spawn_worker(
            index,
            Arc::clone(&context),
            receiver.clone(),
            done_sender.clone(),
            Arc::clone(&shutdown),
        )?;
    }
    drop(receiver);
    drop(done_sender);
    let (refusals, refused) = bounded::<TcpStream>(REFUSER_QUEUE);
    let refuser = {
        let shutdown = Arc::clone(&shutdown);
        spawn("refuser", move || {
            for stream in refused.iter() {
                let reason = if shutdown.load(Ordering::SeqCst) {
                    ApiError::ShuttingDown
                } else {
                    ApiError::TooManyConnections
                };
                // Under a flood, no lingering: the next refusal must not wait for this one.
                let linger = if refused.is_empty() {
                    REFUSED_LINGER
                } else {
                    Duration::ZERO
                };
                refuse(stream, &reason, linger);
            }
        })?
    };

    let shared = Arc::new(Shared {
        context: Arc::clone(&context),
        jobs,
        limits: Limits {
            head_timeout: config.head_timeout,
            idle_timeout: config.idle_timeout,
            body_timeout: config.client_timeout,
            write_timeout: config.client_timeout,
            ..Limits::default()
        },
        shutdown: Arc::clone(&shutdown),
    });
    accept_loop(&listener, &shared, &refusals, max_connections);

    log::info!(
        "shutting down: finishing in-flight requests (at most {:?}); new ones get 503",
        config.shutdown_grace
    );
    let stopping = Instant::now();
    let deadline = stopping + config.shutdown_grace;
    // Connections end when idle (they watch `shutdown`) or when their request is done;
    // the workers end once every connection has let go of the queue.
    drop(shared);
    let drained = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // Meanwhile, new connections are answered 503 at once rather than refused by a
        // closed port, so that a client can tell a server going away from one gone.
        let turn_away = std::thread::Builder::new()
            .name("turn-away".into())
            .spawn_scoped(scope, || {
                while !drained.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let _ = refusals.try_send(stream);
                        }
                        Err(error) if is_transient(&error) => {}
                        // Out of descriptors or worse: no busy loop while it lasts.
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            });
        if let Err(error) = turn_away {
            log::warn!("cannot start thread turn-away: {error}; new connections are refused");
        }
        wait_for_workers(&done_receiver, config, &context.edge, deadline);
        drained.store(true, Ordering::SeqCst);
    });
    drop(listener);
    drop(refusals);
    // The clean-up is bounded too: it may use what the drain left of `EXIT_WITHIN`, and
    // `CLEANUP_BUDGET` at least; past that we exit without it. What is left then is no
    // leak: warm containers end with our connections to their stubs, and the next
    // start-up sweep removes the rest (their owner is gone).
    let budget = (stopping + EXIT_WITHIN)
        .saturating_duration_since(Instant::now())
        .max(CLEANUP_BUDGET);
    let (cleaned, cleanup_done) = bounded::<()>(1);
    let cleanup = {
        let context = Arc::clone(&context);
        spawn("cleanup", move || {
            if with_engine {
                context.pool.shut_down(&context.docker);
            }
            for thread in joinable {
                let _ = thread.join();
            }
            let _ = refuser.join();
            if with_engine {
                crate::containers::sweep::remove_temporary(&context.docker, &context.config, None);
            }
            let _ = cleaned.send(());
        })
    };
    match cleanup {
        Ok(_) => {
            if cleanup_done.recv_timeout(budget).is_err() {
                log::warn!(
                    "clean-up not finished after {budget:?}; exiting without it (the \
                     next start removes what is left)"
                );
                // The lease file stays, its lock freed when we exit: it is what tells the
                // next sweep, even from another PID namespace, that our containers' owner
                // is gone.
                std::mem::forget(lease);
                return Ok(());
            }
        }
        Err(error) => log::warn!("{error}; exiting without clean-up"),
    }
    drop(lease);
    log::info!("stopped");
    Ok(())
}

/// The threads of a server with an engine: the pool's refill and reaper, expiry, the
/// egress rules' watch and the engine's; the joinable ones (the rest hold nothing and
/// end with the process).
fn engine_threads(
    context: &Arc<Context>,
    shutdown: &Arc<AtomicBool>,
) -> Result<Vec<std::thread::JoinHandle<()>>, String> {
    let refill = {
        let context = Arc::clone(context);
        spawn("pool-refill", move || {
            context.pool.refill_loop(&context.docker, &context.config)
        })?
    };
    let reaper = {
        let context = Arc::clone(context);
        spawn("reaper", move || context.pool.reap_loop(&context.docker))?
    };
    // Not joined: it holds no container of its own, and ends with the process.
    {
        let context = Arc::clone(context);
        let shutdown = Arc::clone(shutdown);
        spawn("expiry", move || {
            while !shutdown.load(Ordering::SeqCst) {
                if context.engine.is_up() {
                    let Context {
                        expiry,
                        docker,
                        config,
                        history,
                        tenants,
                        ..
                    } = &*context;
                    let namespaces = tenants.namespaces(&config.namespace);
                    // A pass that panics must not end expiry for good.
                    let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        expiry.reap(docker, config, history, &namespaces)
                    }));
                    if pass.is_err() {
                        log::error!("expiry: a pass failed (a bug); trying again in a second");
                    }
                }
                std::thread::sleep(crate::expiry::EVERY);
            }
        })?;
    }
    // Sandboxes with an egress policy get their rules (and allow-lists their resolver)
    // back before the first request is accepted: a restarted server must not run a
    // command there before its names resolve. With the engine down, once it is back.
    let restored = context.engine.is_up() && egress_at_start(context);
    // Not joined: it holds nothing, and ends with the process.
    {
        let context = Arc::clone(context);
        let shutdown = Arc::clone(shutdown);
        spawn("egress-watch", move || {
            use crate::containers::egress;
            let mut started = restored;
            let mut next = Instant::now();
            while !shutdown.load(Ordering::SeqCst) {
                if Instant::now() >= next && context.engine.is_up() {
                    let (docker, config) = (&context.docker, &context.config);
                    crate::containers::disk::set_served(
                        context.tenants.namespaces(&config.namespace),
                    );
                    if !started {
                        started = egress_at_start(&context);
                    }
                    if egress::in_use() {
                        // Failures are logged by `look`; public creates are refused
                        // until a look succeeds.
                        let _ = egress::look(docker);
                    }
                    if crate::containers::allow::in_use() {
                        if let Err(error) = crate::containers::allow::look(docker) {
                            log::error!("egress: allow-lists: {error}");
                        }
                    }
                    next = Instant::now() + egress::WATCH_EVERY;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })?;
    }
    let watch = {
        let context = Arc::clone(context);
        let shutdown = Arc::clone(shutdown);
        spawn("engine-watch", move || {
            let Context {
                engine,
                docker,
                config,
                pool,
                ..
            } = &*context;
            engine.watch_loop(docker, config, pool, &shutdown)
        })?
    };

    Ok(vec![refill, reaper, watch])
}

/// The rules of the public and allow-list sandboxes of every namespace served, put back
/// at start (`egress::at_start`, `allow::at_start`); whether it could look.
fn egress_at_start(context: &Context) -> bool {
    let namespaces = context.tenants.namespaces(&context.config.namespace);
    crate::containers::egress::at_start(&context.docker, &namespaces)
        & crate::containers::allow::at_start(&context.docker, &namespaces)
}

/// Waits until every worker has finished, or `deadline`.
fn wait_for_workers(done: &Receiver<()>, config: &Config, edge: &EdgeStats, deadline: Instant) {
    let mut finished = 0;
    while finished < config.workers {
        let left = deadline.saturating_duration_since(Instant::now());
        match done.recv_timeout(left) {
            Ok(()) => finished += 1,
            Err(_) => {
                log::warn!(
                    "{} of {} workers not finished and {} connections still open after {:?}; \
                     exiting without them",
                    config.workers - finished,
                    config.workers,
                    edge.connections.load(Ordering::SeqCst),
                    config.shutdown_grace
                );
                return;
            }
        }
    }
}

/// This server's owner lease under the data dir (none without one: then our containers'
/// owner is judged by its process alone).
fn take_lease(config: &Config) -> Option<crate::containers::owner::Lease> {
    use crate::containers::owner::{leases_dir, Lease};
    let dir = leases_dir(config.data_dir.as_ref()?, config.namespace.as_str());
    Lease::take(&dir)
        .inspect_err(|error| {
            log::warn!(
                "cannot take an owner lease under {}: {error}",
                dir.display()
            )
        })
        .ok()
}

fn spawn<F: FnOnce() + Send + 'static>(
    name: &str,
    body: F,
) -> Result<std::thread::JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(body)
        .map_err(|error| format!("cannot start thread {name}: {error}"))
}

/// Binds the listener with a short receive timeout, which on Linux bounds `accept`: the
/// accept loop wakes at least that often to notice shutdown.
fn listen(address: &str) -> Result<TcpListener, String> {
    use rustix::net::sockopt::{set_socket_timeout, Timeout};
    let listener = TcpListener::bind(address).map_err(|error| error.to_string())?;
    set_socket_timeout(&listener, Timeout::Recv, Some(Duration::from_millis(200)))
        .map_err(|error| error.to_string())?;
    Ok(listener)
}

/// The configured connection limit, lowered so that connections cannot use up the
/// open-files limit the engine connections (every worker's, every warm container's)
/// also need.
fn connection_limit(config: &Config) -> usize {
    let open_files = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    // Warm containers: the keys' minimums (those configured, and keys that requests
    // add, up to `MAX_KEYS` in all), or `--pool-max` if that is more; and the used ones
    // the reaper holds.
    let configured = config.pool_keys();
    let least: usize = configured.iter().map(|(_, size)| size).sum::<usize>()
        + crate::containers::pool::MAX_KEYS.saturating_sub(configured.len())
            * config.pool_dynamic_size;
    let pool = least.max(config.pool_max) + crate::containers::pool::MAX_HELD;
    // Engine connections (a batch's commands run `--batch-concurrency` at once in each
    // worker), warm containers' stub streams, the refused connections waiting for the
    // refuser, and a margin for files, the listener and the spare fd.
    let engine = config.workers * 8 + config.workers * config.batch_concurrency * 3;
    let reserve = (engine + pool * 2 + REFUSER_QUEUE + 1 + 64) as u64;
    // Fewer than 16 connections is no server at all; that low, the engine's share gives.
    let room = open_files.saturating_sub(reserve).max(16);
    let limit = (config.max_connections as u64).min(room) as usize;
    if limit < config.max_connections {
        log::warn!(
            "at most {limit} client connections: the open-files limit is {open_files} \
             (raise it with ulimit -n for more)"
        );
    }
    limit
}

/// Accepts until shutdown. Never ends on an error: out of file descriptors, it closes a
/// spare one to accept and refuse the waiting connection, then pauses; anything else is
/// logged and retried.
fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    refusals: &Sender<TcpStream>,
    max_connections: usize,
) {
    let edge = &shared.context.edge;
    let mut spare = std::fs::File::open("/dev/null").ok();
    let mut last_warning: Option<Instant> = None;
    let mut warn = |message: String| {
        if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(5)) {
            log::warn!("{message}");
            last_warning = Some(Instant::now());
        }
    };
    while !shared.shutdown.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(error) if is_transient(&error) => continue,
            Err(error) if is_out_of_files(&error) => {
                warn(format!(
                    "cannot accept a connection: {error}; refusing until some close"
                ));
                drop(spare.take());
                if let Ok((stream, _)) = listener.accept() {
                    drop(stream);
                }
                spare = std::fs::File::open("/dev/null").ok();
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(error) => {
                warn(format!("cannot accept a connection: {error}"));
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if edge.connections.load(Ordering::SeqCst) >= max_connections {
            warn(format!(
                "{max_connections} connections are open: refusing new ones"
            ));
            let _ = refusals.try_send(stream);
            continue;
        }
        edge.connections.fetch_add(1, Ordering::SeqCst);
        let for_thread = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let shared = for_thread;
                let _open = OpenConnection(&shared.context.edge);
                let connection = Connection::new(stream);
                if catch_unwind(AssertUnwindSafe(|| serve_connection(&shared, connection))).is_err()
                {
                    log::error!("a connection's thread panicked; the connection is closed");
                }
            });
        if let Err(error) = spawned {
            // The connection went with the closure: it is closed.
            edge.connections.fetch_sub(1, Ordering::SeqCst);
            warn(format!("cannot start a connection thread: {error}"));
        }
    }
}

/// Counts a connection as open for as long as its thread holds this.
struct OpenConnection<'a>(&'a EdgeStats);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        WouldBlock | TimedOut | Interrupted | ConnectionAborted | ConnectionReset
    )
}

fn is_out_of_files(error: &std::io::Error) -> bool {
    let code = error.raw_os_error();
    code == Some(rustix::io::Errno::MFILE.raw_os_error())
        || code == Some(rustix::io::Errno::NFILE.raw_os_error())
        || code == Some(rustix::io::Errno::NOBUFS.raw_os_error())
        || code == Some(rustix::io::Errno::NOMEM.raw_os_error())
}

/// The `refuser` thread's work: a 503 to a connection over the limit (or arriving
/// while we shut down), then close.
fn refuse(stream: TcpStream, reason: &ApiError, linger: Duration) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let mut connection = Connection::new(stream);
    let reply = reason.reply();
    let _ = answer_of(&reply, false, true)
        .write_to(&mut connection.stream, &|out| reply.write_body(out));
    connection.linger_close(linger);
}

/// Starts worker `index`. A worker that dies anyway (a panic outside the guarded
/// handler that `catch_unwind` could not stop) is replaced by its guard.
fn spawn_worker(
    index: usize,
    context: Arc<Context>,
    receiver: Receiver<Job>,
    done: Sender<()>,
    shutdown: Arc<AtomicBool>,
) -> Result<(), String> {
    // Counted before the thread runs, so that `/health` never sees a pool still starting
    // as a shrunken one; the guard takes it back when the thread ends.
    context.edge.workers_alive.fetch_add(1, Ordering::SeqCst);
    let edge_context = Arc::clone(&context);
    spawn(&format!("worker-{index}"), move || {
        let guard = WorkerGuard {
            index,
            context: Arc::clone(&context),
            receiver: receiver.clone(),
            done: done.clone(),
            shutdown,
        };
        for job in receiver {
            if catch_unwind(AssertUnwindSafe(|| work(&context, job))).is_err() {
                log::error!("worker-{index}: a request panicked outside its handler");
            }
        }
        drop(guard);
        let _ = done.send(());
    })
    .map(|_| ())
    .inspect_err(|_| {
        edge_context
            .edge
            .workers_alive
            .fetch_sub(1, Ordering::SeqCst);
    })
}

/// Keeps the count of live workers, and replaces a worker whose thread unwinds.
struct WorkerGuard {
    index: usize,
    context: Arc<Context>,
    receiver: Receiver<Job>,
    done: Sender<()>,
    shutdown: Arc<AtomicBool>,
}

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        self.context
            .edge
            .workers_alive
            .fetch_sub(1, Ordering::SeqCst);
        if std::thread::panicking() && !self.shutdown.load(Ordering::SeqCst) {
            log::error!("worker-{} died; starting a new one", self.index);
            let _ = spawn_worker(
                self.index,
                Arc::clone(&self.context),
                self.receiver.clone(),
                self.done.clone(),
                Arc::clone(&self.shutdown),
            );
        }
    }
}

/// A worker's part of a request: the handler, and writing an event stream.
fn work(context: &Context, job: Job) {
    let Job {
        route,
        namespace,
        body,
        head,
        mut connection,
        done,
        cancel,
        lease,
        stopping,
    } = job;
    if let Some(agents) = context.cluster.as_ref() {
        let routed = catch_unwind(AssertUnwindSafe(|| {
            let incoming = router::Incoming {
                route: &route,
                namespace: &namespace,
                head: &head,
                body: &body,
                cancel: &cancel,
                stopping: &stopping,
            };
            router::route(context, agents, incoming, &mut connection.stream)
        }));
        drop(body);
        drop(lease);
        let handled = match routed {
            Ok(router::Routed::Reply(reply)) => Handled::Reply(connection, reply),
            Ok(router::Routed::Proxied {
                status,
                reusable: true,
            }) => Handled::Relayed(connection, status),
            Ok(router::Routed::Proxied { status, .. }) => Handled::Streamed(status),
            // Part of an answer may be out already: the connection goes with it.
            Err(_) => {
                log::error!("routing a request panicked (a bug); the connection is closed");
                Handled::Streamed(500)
            }
        };
        let _ = done.send(handled);
        return;
    }
    let hook = test_hook(context, &head);
    let elsewhere = head
        .header(crate::tenants::ELSEWHERE_HEADER)
        .and_then(crate::tenants::Elsewhere::parse)
        .unwrap_or_default();
    let reply = guarded(&context.metrics, move || {
        if hook == Some("handler") {
            panic!("test hook: panic in a handler");
        }
        // Parsed, the body's bytes are of no more use: neither they nor their share of
        // the budget wait for the handler and the answer.
        let parsed = Request::parse(route, &body).map(|request| request.with_elsewhere(elsewhere));
        drop(body);
        drop(lease);
        parsed.and_then(|request| handlers::dispatch_with(context, &namespace, request, &cancel))
    });
    let mut reply = reply;
    match reply.stream.take() {
        Some(stream_job) => {
            let slots = reply.run_slots.take();
            // Past the stream's head no error answer can be sent: a panic closes the
            // connection (the client sees the stream end without its `done` event).
            let streamed = catch_unwind(AssertUnwindSafe(|| {
                if hook == Some("stream") {
                    let _ = std::io::Write::write_all(
                        &mut connection.stream,
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n",
                    );
                    panic!("test hook: panic while writing an event stream");
                }
                sse::stream(
                    context,
                    &mut connection.stream,
                    stream_job,
                    slots,
                    head.http10,
                )
            }));
            let status = streamed.unwrap_or_else(|_| {
                log::error!("writing an event stream panicked; the connection is closed");
                500
            });
            let _ = done.send(Handled::Streamed(status));
        }
        None => {
            let _ = done.send(Handled::Reply(connection, Box::new(reply)));
        }
    }
}

/// The `X-Agentkernel-Test-Panic` header's value, when test hooks are on.
fn test_hook<'a>(context: &Context, head: &'a Head) -> Option<&'a str> {
    if context.config.test_hooks {
        head.header("x-agentkernel-test-panic")
    } else {
        None
    }
}

/// A `conn` thread's work: requests in, answers out, until the client closes, stays
/// idle too long, breaks a bound, or the server shuts down.
fn serve_connection(shared: &Shared, mut connection: Connection) {
    let context = &shared.context;
    let limits = &shared.limits;
    let _ = connection
        .stream
        .set_write_timeout(Some(limits.write_timeout));
    let _ = connection.stream.set_nodelay(true);
    loop {
        let stop = || shared.shutdown.load(Ordering::SeqCst);
        let head = match connection.read_head(limits, &stop) {
            Ok(head) => head,
            Err(HeadError::Closed) => return,
            Err(error) => {
                let error = ApiError::from(error);
                finish_early(context, connection, None, &error, Instant::now());
                return;
            }
        };
        let started = Instant::now();
        if stop() {
            // Arrived after shutdown began (on a kept-alive connection): not in flight.
            finish_early(
                context,
                connection,
                Some(&head),
                &ApiError::ShuttingDown,
                started,
            );
            return;
        }
        let (route, limit, namespace) = match admit(context, &head) {
            Ok(admitted) => admitted,
            Err(error) => {
                // An answer before the body: unless there is no body, close rather
                // than read (or wait for) one we will not use.
                if head.framing == Framing::Empty && head.keep_alive && !stop() {
                    let reply = error.reply();
                    if write_reply(&mut connection, &head, &reply, false).is_err() {
                        return;
                    }
                    log_request(context, &head, reply.status, started);
                    continue;
                }
                finish_early(context, connection, Some(&head), &error, started);
                return;
            }
        };
        // A cluster's large upload goes on to its agent as it arrives, from this
        // thread: a slow uploader holds a connection, never a worker.
        let streams = router::streams_body(&context.config, &route, &head);
        if let Some(agents) = context.cluster.as_ref().filter(|_| streams) {
            let mut lease = BodyLease::new(Arc::clone(&shared.context));
            if !lease.grow_to(router::UPLOAD_BYTES) {
                finish_early(
                    context,
                    connection,
                    Some(&head),
                    &ApiError::BodiesInFlight,
                    started,
                );
                return;
            }
            let upload = router::Upload {
                route: &route,
                namespace: &namespace,
                head: &head,
                limit,
                body_timeout: limits.body_timeout,
                stop: &stop,
            };
            let status = catch_unwind(AssertUnwindSafe(|| {
                router::upload(context, agents, upload, &mut connection)
            }))
            .unwrap_or_else(|_| {
                log::error!("routing an upload panicked (a bug); the connection is closed");
                Some(500)
            });
            drop(lease);
            if let Some(status) = status {
                log_request(context, &head, status, started);
            }
            connection.linger_close(LINGER);
            return;
        }
        // The body's memory is granted as it arrives, from a budget all connections
        // share: past it, a 503 instead of one more buffer. (Granted bytes are what
        // clients sent, so idle connections that declare large bodies hold nothing.)
        let mut lease = BodyLease::new(Arc::clone(&shared.context));
        if head.expect_continue && head.framing != Framing::Empty && !head.http10 {
            let go_ahead = b"HTTP/1.1 100 Continue\r\n\r\n";
            if std::io::Write::write_all(&mut connection.stream, go_ahead).is_err() {
                return;
            }
        }
        let body =
            match connection.read_body(&head, limit, limits.body_timeout, &stop, &mut |bytes| {
                lease.grow_to(bytes)
            }) {
                Ok(body) => body,
                Err(error) => {
                    if let Some(error) = body_error(error, limit) {
                        finish_early(context, connection, Some(&head), &error, started);
                    }
                    return;
                }
            };
        lease.shrink_to(body.capacity() as u64);
        let keep_alive = head.keep_alive;
        let handled = if route == Route::Health {
            // Liveness never waits in the queue: answered here, whatever the workers do.
            let reply = guarded(&context.metrics, || match context.cluster.as_deref() {
                Some(agents) => Ok(router::health(context, agents)),
                None => Request::parse(route, &body)
                    .and_then(|request| handlers::dispatch(context, request)),
            });
            drop(lease);
            Ok(Handled::Reply(connection, Box::new(reply)))
        } else {
            let (done, handled) = bounded::<Handled>(1);
            let cancel = Cancel::new();
            // Streams notice a departed client themselves (their heartbeats fail).
            let watch = match route {
                Route::RunStream | Route::ExecSandboxStream(_) => None,
                _ => connection.stream.try_clone().ok(),
            };
            let job = Job {
                route,
                namespace,
                body,
                head: head.clone(),
                connection,
                done,
                cancel: cancel.clone(),
                lease,
                stopping: Arc::clone(&shared.shutdown),
            };
            match shared.jobs.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                    let mut connection = job.connection;
                    let reply = ApiError::Busy.reply();
                    let _ = write_reply(&mut connection, &head, &reply, true);
                    log_request(context, &head, reply.status, started);
                    connection.linger_close(LINGER);
                    return;
                }
            }
            wait_for_worker(&handled, watch.as_ref(), &cancel, &head)
        };
        match handled {
            Ok(Handled::Reply(mut back, reply)) => {
                let hook = test_hook(context, &head);
                let close = !keep_alive || stop();
                let written = catch_unwind(AssertUnwindSafe(|| {
                    if hook == Some("write") {
                        panic!("test hook: panic while writing an answer");
                    }
                    write_reply(&mut back, &head, &reply, close)
                }));
                log_request(context, &head, reply.status, started);
                match written {
                    Ok(Ok(())) if !close => connection = back,
                    // Closed after a whole answer: linger, so that what the client sent
                    // after this request does not reset the answer away unread.
                    Ok(Ok(())) => {
                        back.linger_close(LINGER);
                        return;
                    }
                    Ok(Err(_)) => return,
                    Err(_) => {
                        log::error!("writing an answer panicked; the connection is closed");
                        return;
                    }
                }
            }
            Ok(Handled::Streamed(status)) => {
                log_request(context, &head, status, started);
                return;
            }
            Ok(Handled::Relayed(back, status)) => {
                log_request(context, &head, status, started);
                if stop() {
                    back.linger_close(LINGER);
                    return;
                }
                connection = back;
            }
            // The worker's request panicked outside its handler: the connection went
            // with it.
            Err(_) => {
                log_request(context, &head, 500, started);
                return;
            }
        }
    }
}

/// How often a connection waiting for its answer looks whether its client hung up.
const DEPARTURE_CHECK: Duration = Duration::from_millis(250);

/// Waits for the worker's answer. Meanwhile a client that hangs up (closes or resets
/// the connection) has its request cancelled: a command it started is killed rather
/// than run to its deadline for nobody.
fn wait_for_worker(
    handled: &Receiver<Handled>,
    watch: Option<&TcpStream>,
    cancel: &Cancel,
    head: &Head,
) -> Result<Handled, RecvError> {
    loop {
        match handled.recv_timeout(DEPARTURE_CHECK) {
            Ok(handled) => return Ok(handled),
            Err(RecvTimeoutError::Disconnected) => return Err(RecvError),
            Err(RecvTimeoutError::Timeout) => {
                if let Some(stream) = watch {
                    if !cancel.is_cancelled() && hung_up(stream) {
                        log::info!(
                            "{} {}: the client hung up; cancelling",
                            head.method,
                            head.target.split('?').next().unwrap_or_default()
                        );
                        cancel.cancel();
                    }
                }
            }
        }
    }
}

/// Whether the client closed its side or the connection broke. Bytes waiting to be
/// read (a pipelined request) are not a hang-up.
fn hung_up(stream: &TcpStream) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(stream, PollFlags::IN | PollFlags::RDHUP)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&now)) {
        Ok(0) => false,
        Ok(_) => fds[0]
            .revents()
            .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
        Err(_) => false,
    }
}

/// The answer to a body that could not be read (`None`: the client went away).
fn body_error(error: BodyError, limit: u64) -> Option<ApiError> {
    Some(match error {
        BodyError::TooLarge => ApiError::BodyTooLarge { limit },
        BodyError::TimedOut => ApiError::RequestTimeout("body"),
        BodyError::Stopped => ApiError::ShuttingDown,
        BodyError::OverBudget => ApiError::BodiesInFlight,
        BodyError::Bad(message) => ApiError::BadBody(format!("Malformed chunked body: {message}")),
        BodyError::Closed => return None,
    })
}

/// Answers an error found before the body was read, then closes.
fn finish_early(
    context: &Context,
    mut connection: Connection,
    head: Option<&Head>,
    error: &ApiError,
    started: Instant,
) {
    let reply = error.reply();
    let head_only = head.is_some_and(|head| head.method == "HEAD");
    let _ = answer_of(&reply, head_only, true)
        .write_to(&mut connection.stream, &|out| reply.write_body(out));
    match head {
        Some(head) => log_request(context, head, reply.status, started),
        None => log::info!("- - {} (bad request head)", reply.status),
    }
    connection.linger_close(LINGER);
}

/// Writes an answer as it is serialized (its length measured first), so that a large
/// one (a command's output, a file) is never held a second time as bytes.
fn write_reply(
    connection: &mut Connection,
    head: &Head,
    reply: &Reply,
    close: bool,
) -> std::io::Result<()> {
    let mut answer = answer_of(reply, head.method == "HEAD", close);
    answer.keep_alive_10 = head.http10 && !close;
    let grace = grace_of(&connection.stream);
    let mut paced = PacedWriter::new(&mut connection.stream, grace);
    answer.write_to(&mut paced, &|out| reply.write_body(out))
}

/// The grace before an answer's pace is held: the connection's write timeout.
fn grace_of(stream: &TcpStream) -> Duration {
    stream
        .write_timeout()
        .ok()
        .flatten()
        .unwrap_or(Duration::from_secs(30))
}

fn answer_of(reply: &Reply, head_only: bool, close: bool) -> Answer<'_> {
    Answer {
        status: reply.status,
        content_type: reply.content_type(),
        headers: &reply.headers,
        length: reply.body_length(),
        head_only,
        close,
        keep_alive_10: false,
    }
}

/// One info line per request: method, path (no query: it may hold secrets), status,
/// time; and the request counted for `GET /metrics`, by its route's template.
fn log_request(context: &Context, head: &Head, status: u16, started: Instant) {
    let path = head.target.split('?').next().unwrap_or_default();
    let route = routes::parse(&head.method, path)
        .ok()
        .map(|route| route.operation().1);
    context
        .metrics
        .record(&head.method, route, status, started.elapsed());
    log::info!(
        "{} {path} {status} {}ms",
        head.method,
        started.elapsed().as_millis()
    );
}

/// Runs a handler so that a panic becomes a 500 answer and the worker lives on.
fn guarded(metrics: &metrics::Metrics, handler: impl FnOnce() -> Result<Reply, ApiError>) -> Reply {
    match catch_unwind(AssertUnwindSafe(handler)) {
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => {
            if matches!(error, ApiError::Domain(crate::error::Error::Engine(_))) {
                metrics
                    .engine_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            error.reply()
        }
        Err(_) => {
            log::error!("request handler panicked");
            ApiError::Panic.reply()
        }
    }
}

/// The API key a request carries: `X-API-Key`, else `Authorization: Bearer`.
fn api_key_of(head: &Head) -> Option<&str> {
    if let Some(key) = head.header("x-api-key") {
        return Some(key);
    }
    let value = head.header("authorization")?;
    // The scheme name is case-insensitive (RFC 9110).
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Decides everything that needs no body, before any of it is read: a declared length
/// over the limit (413, whoever asks: the number alone settles it), the key (401), the
/// route (404, 405, 400). Gives the route, its body limit and the request's namespace.
fn admit(context: &Context, head: &Head) -> Result<(Route, u64, Namespace), ApiError> {
    let route = routes::parse(&head.method, &head.target);
    let limit = match &route {
        Ok(route) => body_limit(&context.config, route),
        Err(_) => context.config.max_body_bytes,
    };
    if matches!(head.framing, Framing::Length(length) if length > limit) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let namespace = namespace_of(context, head)?;
    Ok((route?, limit, namespace))
}

/// The namespace a request works in, chosen by its key: the server's, for the server's
/// own key (`AGENTKERNEL_API_KEY`) or when it has no keys at all; a tenant's, for a key
/// of the keys file. Any other key, or none, is a 401.
fn namespace_of(context: &Context, head: &Head) -> Result<Namespace, ApiError> {
    let (config, tenants) = (&context.config, &context.tenants);
    if config.api_key.is_none() && !tenants.enabled() {
        return Ok(config.namespace.clone());
    }
    let given = api_key_of(head).unwrap_or_default();
    if let Some(expected) = &config.api_key {
        if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return Ok(config.namespace.clone());
        }
    }
    if given.is_empty() {
        return Err(ApiError::Unauthorized);
    }
    tenants.namespace_of(given).ok_or(ApiError::Unauthorized)
}

/// The largest body a route accepts: file uploads carry a whole file (in base64), every
/// other body is small.
pub fn body_limit(config: &Config, route: &Route) -> u64 {
    match route {
        Route::PutSandboxFile(..) | Route::PostSandboxFiles(_) => config.max_upload_body_bytes(),
        // A tar of at most a file's limit, with its headers.
        Route::PutArchive(..) => config.max_file_bytes.saturating_add(64 * 1024),
        _ => config.max_body_bytes,
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
        let metrics = metrics::Metrics::default();
        let reply = guarded(&metrics, || panic!("boom"));
        assert_eq!(reply.status, 500);
        assert_eq!(reply.into_envelope()["success"], serde_json::json!(false));
        let reply = guarded(&metrics, || Err(ApiError::Busy));
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
