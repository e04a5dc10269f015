//! Cluster mode (`serve --cluster`): a server with no engine of its own. Its edge, keys
//! and routes are a server's; each request goes on to one of its agents
//! (`cluster::Agents`), and the agent's answer comes back as it flows.
//!
//! - `/run`, its stream and `/batch/run`: the agent up with the most warm containers to
//!   spare, then the fewest requests in flight (`/backends` likewise, taking none); an
//!   agent that refuses the connection is marked down and the next one tried (nothing
//!   reached it).
//! - A new sandbox: rendezvous hashing of its namespace and name over the agents up
//!   (two routers agree); a name that an agent up already has goes there (its 409).
//! - A sandbox by name: where it was last found, else where its name hashes; on a 404
//!   there, every other agent is asked, and the answer remembered. A sandbox on an agent
//!   that is down is a 503 naming the node, never another sandbox's answer.
//! - Lists (`/sandboxes`, `/snapshots`, `/volumes`) merge every agent's; `/pool` shows
//!   each agent's; `/health` each agent's state; `/metrics` each agent's, labelled.
//! - Uploads (`upload`): the agent that has the sandbox is found first, then the body is
//!   copied to it as it arrives; never read whole here.
//!
//! Invariant: a request is sent to at most one agent unless every earlier one answered
//! 404 (nothing done) or refused the connection (nothing received).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster::client::{self, Body, SendError};
use crate::cluster::Agents;
use crate::config::Namespace;
use crate::containers::labels::SandboxName;
use crate::exec::Cancel;
use crate::tenants::{Elsewhere, ELSEWHERE_HEADER};

use super::http::{BodyReader, Connection, Head};
use super::response::{ApiError, Reply};
use super::routes::Route;
use super::Context;

/// What became of a request.
pub enum Routed {
    /// An answer for the edge to write (the router's own, or an agent's read whole).
    Reply(Box<Reply>),
    /// An agent's answer, written through as it came, with this status; `reusable`
    /// when it ended cleanly on a connection the client keeps alive (else the
    /// connection is closed after it).
    Proxied { status: u16, reusable: bool },
}

fn reply_of(reply: Reply) -> Routed {
    Routed::Reply(Box::new(reply))
}

/// Headers never passed on, either way: they are about one connection, or we set them.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-type",
    "host",
    "expect",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    // Ours to set (`holdings_by_node`).
    crate::tenants::ELSEWHERE_HEADER,
];

/// How long a lookup (is the sandbox there? an agent's list) may take in all.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// A request as it goes on to an agent.
struct Forward<'a> {
    method: &'a str,
    target: &'a str,
    headers: Vec<(String, String)>,
    body: Option<(&'a str, &'a [u8])>,
    /// How long the agent may take over its whole answer: a command's longest time, and
    /// a margin.
    timeout: Duration,
    agents: Arc<Agents>,
    /// Set when the client hangs up before its answer.
    cancel: Cancel,
    /// HTTP/1.0: no chunked answers.
    http10: bool,
    /// The client keeps its connection alive after the answer (unless the server is
    /// stopping by then).
    keep_alive: bool,
    stopping: Option<&'a std::sync::atomic::AtomicBool>,
    /// `DELETE /sandboxes/{name}`: once it succeeds, where the sandbox was is forgotten.
    deletes_sandbox: bool,
    /// For a request that adds to what a tenant with quotas holds: what it holds on each
    /// agent, so that each agent is told what it holds on the others.
    holdings: Option<HashMap<String, Elsewhere>>,
}

impl Forward<'_> {
    /// Sends the request to `node`; its answer is read while the client waits for it
    /// and `node` is up.
    fn send(&self, node: &str) -> Result<client::Answer, SendError> {
        let (agents, cancel, address) = (
            Arc::clone(&self.agents),
            self.cancel.clone(),
            node.to_string(),
        );
        // A counted create (`holdings`) is waited for to its end even if its client
        // leaves: until it has, its tenant's count is not known.
        let counted = self.holdings.is_some();
        let wanted =
            Box::new(move || (counted || !cancel.is_cancelled()) && agents.is_up(&address));
        let mut headers = std::borrow::Cow::Borrowed(&self.headers);
        if let Some(holdings) = &self.holdings {
            let elsewhere = holdings
                .iter()
                .filter(|(other, _)| other.as_str() != node)
                .fold(Elsewhere::default(), |sum, (_, held)| sum.add(held));
            headers
                .to_mut()
                .push((ELSEWHERE_HEADER.to_string(), elsewhere.header_value()));
        }
        let body = match self.body {
            Some((content_type, bytes)) => Body::Whole {
                content_type,
                bytes,
            },
            None => Body::None,
        };
        client::send(
            node,
            self.method,
            self.target,
            &headers,
            body,
            Instant::now() + self.timeout,
            wanted,
        )
    }

    /// A `GET` of `target` to `node` with this request's headers, read whole within
    /// `LOOKUP_TIMEOUT`.
    fn get(&self, node: &str, target: &str) -> Result<(u16, Vec<u8>), SendError> {
        client::get(node, target, &self.headers, LOOKUP_TIMEOUT)
    }
}

/// A request that has arrived whole at the edge (all but uploads), with whose it is.
pub struct Incoming<'a> {
    pub route: &'a Route,
    pub namespace: &'a Namespace,
    pub head: &'a Head,
    pub body: &'a [u8],
    /// Set when the client hangs up before its answer.
    pub cancel: &'a Cancel,
    /// The server's shutdown flag.
    pub stopping: &'a std::sync::atomic::AtomicBool,
}

/// Routes one request that has arrived whole; writes an agent's answer to `out` itself
/// (`Routed::Proxied`).
pub fn route(
    context: &Context,
    agents: &Arc<Agents>,
    incoming: Incoming<'_>,
    out: &mut TcpStream,
) -> Routed {
    let Incoming {
        route,
        namespace,
        head,
        body,
        cancel,
        stopping,
    } = incoming;
    let mut forward = forward_of(context, agents, route, head, Some(body), cancel);
    forward.stopping = Some(stopping);
    // A tenant's quotas bound the cluster: what it holds everywhere is counted, under
    // the lock of its counts (so that this router's creates never both take the last
    // place), and each agent is told what is held on the others.
    let lists = counted_lists(context, route, namespace);
    let counting = (!lists.is_empty()).then(|| context.tenants.counting(namespace));
    let _counting = if let Some(counting) = &counting {
        // Held from the count to the agent's answer (a create whose client left is
        // waited for all the same, while its agent is up). The wait for it is bounded,
        // and so are the waiters: one tenant's creates never hold most of the
        // router's workers.
        let busy = || {
            reply_of(
                ApiError::CountBusy {
                    namespace: namespace.as_str().to_string(),
                }
                .reply(),
            )
        };
        // Only counted creates hold the lock's `Arc` (and the tenants' map): past ours
        // and the map's, the holder's and the waiters'.
        let waiters = Arc::strong_count(counting).saturating_sub(3);
        if waiters >= max_count_waiters(context) {
            return busy();
        }
        let Some(guard) = lock_within(counting, COUNT_WAIT) else {
            return busy();
        };
        forward.timeout = COUNTED_TIMEOUT;
        let memory = context.tenants.quotas(namespace).max_memory_mb.is_some();
        match holdings_by_node(agents, &lists, memory, &forward) {
            Ok(holdings) => forward.holdings = Some(holdings),
            Err(error) => return reply_of(error.reply()),
        }
        Some(guard)
    } else {
        None
    };
    match dispatch(context, agents, route, namespace, &forward, body, out) {
        Ok(routed) => routed,
        Err(error) => reply_of(error.reply()),
    }
}

/// Whether a request's body goes on to the agent as it arrives, never read whole at
/// the router: an upload (up to a file's size, where every other body is small) past
/// the ordinary body limit, or chunked (of a length not known). A smaller one is read
/// whole at the edge, as every other body is: its agent sees it only once it is all
/// there, however slowly its client sends it.
pub fn streams_body(config: &crate::config::Config, route: &Route, head: &Head) -> bool {
    let upload = matches!(
        route,
        Route::PutSandboxFile(..) | Route::PostSandboxFiles(_) | Route::PutArchive(..)
    );
    upload
        && match head.framing {
            super::http::Framing::Empty => false,
            super::http::Framing::Length(length) => length > config.max_body_bytes,
            super::http::Framing::Chunked => true,
        }
}

/// How long an agent may take to answer an upload once its body has arrived (the file
/// written into the container).
const UPLOAD_ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// The memory an upload holds at the router, whatever its size: the body's reader, the
/// buffer it is copied through, and the buffer the agent's answer is read through.
pub const UPLOAD_BYTES: u64 = super::http::BODY_READER_BYTES + 2 * 64 * 1024;

/// An upload whose body is still unread on its connection.
pub struct Upload<'a> {
    pub route: &'a Route,
    pub namespace: &'a Namespace,
    pub head: &'a Head,
    /// The route's body limit, and the time the whole body may take to arrive.
    pub limit: u64,
    pub body_timeout: Duration,
    /// Whether the server is shutting down.
    pub stop: &'a dyn Fn() -> bool,
}

/// Routes an upload (`streams_body`): finds the agent that has the sandbox first (a
/// body passed on as it comes cannot be sent twice), then copies the body to it as it
/// arrives, and relays its answer. Answers on `connection` itself (then to be closed);
/// gives the status, or `None` when the client left before any answer.
pub fn upload(
    context: &Context,
    agents: &Arc<Agents>,
    upload: Upload<'_>,
    connection: &mut Connection,
) -> Option<u16> {
    let cancel = Cancel::new();
    let forward = forward_of(context, agents, upload.route, upload.head, None, &cancel);
    let name = upload.route.sandbox().map_or("", SandboxName::as_str);
    let answered = locate(agents, upload.namespace, name, &forward).and_then(|found| match found {
        Ok(node) => {
            // A tenant's uploads have a share of an agent's places; the operator's (and a
            // server without tenants, whose every request is the operator's) all of them.
            let tenant = context.tenants.enabled() && *upload.namespace != context.config.namespace;
            let share = if tenant {
                crate::cluster::MAX_UPLOADS_PER_NAMESPACE
            } else {
                crate::cluster::MAX_UPLOADS
            };
            stream_to(agents, &node, &forward, &upload, share, connection).map(Ok)
        }
        Err(reply) => Ok(Err(reply)),
    });
    let reply = match answered {
        Ok(Ok(status)) => return status,
        Ok(Err(reply)) => reply,
        Err(error) => error.reply(),
    };
    let _ = super::write_reply(connection, upload.head, &reply, true);
    Some(reply.status)
}

/// Where sandbox `name` is, asked before a request that cannot be sent twice: its
/// node; or, when no agent has it, the answer to give (an agent's 404, or its refusal
/// of the request's key).
fn locate(
    agents: &Agents,
    namespace: &Namespace,
    name: &str,
    forward: &Forward<'_>,
) -> Result<Result<String, Reply>, ApiError> {
    let key = key_of(namespace, name);
    let what = format!("Sandbox '{name}'");
    let sandbox = format!("/sandboxes/{name}");
    let first = match first_choice(agents, &key, &what, &sandbox, forward)? {
        Choice::Moved(holder) => {
            agents.remember(&key, &holder);
            return Ok(Ok(holder));
        }
        Choice::First(first) => first,
    };
    let mut not_found = None;
    if let Some(node) = &first {
        let _in_flight = agents.in_flight(node);
        match forward.get(node, &sandbox) {
            Ok((200, _)) => {
                agents.remember(&key, node);
                return Ok(Ok(node.clone()));
            }
            Ok((404, body)) => not_found = Some(body),
            Ok((status, body)) => return Ok(Err(agent_reply(node, status, &body)?)),
            Err(SendError::NotDelivered(error)) => {
                agents.mark_down(node, &error.to_string());
                return Err(ApiError::NodeDown {
                    node: node.clone(),
                    what: format!("{what} is"),
                });
            }
            Err(error) => return Err(failed(agents, node, &what, &error)),
        }
    }
    if let Some(holder) = find(agents, &sandbox, forward, first.as_deref())? {
        agents.remember(&key, &holder);
        return Ok(Ok(holder));
    }
    agents.forget(&key);
    unless_down(agents, &what)?;
    match (first, not_found) {
        (Some(node), Some(body)) => Ok(Err(agent_reply(&node, 404, &body)?)),
        _ => Err(ApiError::NoAgent),
    }
}

/// An agent's answer, read whole, as JSON (else the agent failed).
fn agent_json(node: &str, body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|error| ApiError::AgentFailed {
        node: node.to_string(),
        error: format!("its answer is not JSON: {error}"),
    })
}

/// An agent's JSON answer, read whole, as the router's.
fn agent_reply(node: &str, status: u16, body: &[u8]) -> Result<Reply, ApiError> {
    let mut reply = Reply::json(status, agent_json(node, body)?);
    reply.headers.push(("X-Agentkernel-Node", node.to_string()));
    Ok(reply)
}

/// Sends the upload to `node`, its body copied from the client as it arrives, and
/// relays the answer (`None`: the client left, nothing was answered). A body that
/// breaks off, is too large or too slow cuts the agent's request off (it drops it) and
/// is answered as a single server answers it.
fn stream_to(
    agents: &Agents,
    node: &str,
    forward: &Forward<'_>,
    upload: &Upload<'_>,
    share: u64,
    connection: &mut Connection,
) -> Result<Option<u16>, ApiError> {
    let head = upload.head;
    let down = || ApiError::NodeDown {
        node: node.to_string(),
        what: format!(
            "Sandbox '{}' is",
            upload.route.sandbox().map_or("", SandboxName::as_str)
        ),
    };
    // Each upload holds a connection to its agent while its client sends: a bounded
    // number of them, so that slow clients never take all of an agent's connections.
    let namespace = upload.namespace.as_str();
    let Some(_upload) = agents.upload_slot(node, namespace, share) else {
        if !agents.is_up(node) {
            return Err(down());
        }
        return Err(ApiError::UploadsBusy {
            node: node.to_string(),
        });
    };
    let _in_flight = agents.in_flight(node);
    // Wanted while the agent is up. (Not the client's hang-up: one that closes its
    // side once it has sent its body still wants the answer; one that leaves before
    // it has sent it all ends the copy itself.)
    let wanted: client::Wanted = {
        let (agents, address) = (Arc::clone(&forward.agents), node.to_string());
        Box::new(move || agents.is_up(&address))
    };
    let mut source = BodyReader::new(
        connection,
        head,
        upload.limit,
        upload.body_timeout,
        upload.stop,
    );
    let (length, deadline) = (source.length(), source.deadline());
    let sent = client::send(
        node,
        &head.method,
        &head.target,
        &forward.headers,
        Body::Stream {
            content_type: head.header("content-type").unwrap_or("application/json"),
            length,
            source: &mut source,
            deadline,
        },
        deadline + UPLOAD_ANSWER_TIMEOUT,
        wanted,
    );
    let failure = source.failure.take();
    match sent {
        Ok(answer) => Ok(Some(
            relay(answer, node, head.http10, false, &mut connection.stream).0,
        )),
        Err(SendError::BodyBroken(_)) => {
            match failure.and_then(|error| super::body_error(error, upload.limit)) {
                Some(error) => Err(error),
                None => Ok(None),
            }
        }
        Err(SendError::NotDelivered(error)) => {
            agents.mark_down(node, &error.to_string());
            Err(down())
        }
        Err(error) => Err(failed(agents, node, "The upload", &error)),
    }
}

/// How long a create of a tenant with quotas waits for another one's to be counted.
const COUNT_WAIT: Duration = Duration::from_secs(10);

/// How long an agent may take over a counted create (its tenant's count is held
/// meanwhile): long enough for a snapshot of a large sandbox.
const COUNTED_TIMEOUT: Duration = Duration::from_secs(600);

/// Most of one tenant's creates waiting for its count at once: a quarter of the
/// workers (at least two); past them, a 503 at once.
fn max_count_waiters(context: &Context) -> usize {
    (context.config.workers / 4).max(2)
}

/// `mutex`, if it is free within `wait`.
fn lock_within(
    mutex: &std::sync::Mutex<()>,
    wait: Duration,
) -> Option<std::sync::MutexGuard<'_, ()>> {
    let until = Instant::now() + wait;
    loop {
        match mutex.try_lock() {
            Ok(guard) => return Some(guard),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => return Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(std::sync::TryLockError::WouldBlock) => return None,
        }
    }
}

/// The lists that count what a request adds to a tenant's holdings, where its quotas
/// bound that (none for other requests, and tenants without such quotas).
fn counted_lists(context: &Context, route: &Route, namespace: &Namespace) -> Vec<&'static str> {
    let creates_sandbox = matches!(route, Route::CreateSandbox | Route::RestoreSnapshot(_));
    // (Every routed request asks: the quotas are looked up for creates only.)
    if !creates_sandbox && !matches!(route, Route::CreateSnapshot) {
        return Vec::new();
    }
    let quotas = context.tenants.quotas(namespace);
    [
        (
            "/sandboxes",
            creates_sandbox && (quotas.max_sandboxes.is_some() || quotas.max_memory_mb.is_some()),
        ),
        (
            "/snapshots",
            matches!(route, Route::CreateSnapshot) && quotas.max_snapshots.is_some(),
        ),
        ("/volumes", creates_sandbox && quotas.max_volumes.is_some()),
    ]
    .into_iter()
    .filter_map(|(list, counted)| counted.then_some(list))
    .collect()
}

/// What a tenant holds on each agent up, by `lists`: counted from each agent's lists
/// with the request's key. Agents down are not counted (they may hold more: see
/// docs/cluster.md); an agent that refuses the key is left to refuse the request.
fn holdings_by_node(
    agents: &Agents,
    lists: &[&str],
    memory: bool,
    forward: &Forward<'_>,
) -> Result<HashMap<String, Elsewhere>, ApiError> {
    let up = agents.up();
    let mut holdings: HashMap<String, Elsewhere> = HashMap::new();
    for list in lists {
        for (node, answer) in ask_each(&up, forward, list) {
            let (status, body) =
                answer.map_err(|error| failed(agents, &node, "A tenant's count", &error))?;
            if (400..500).contains(&status) {
                continue;
            }
            let body: Value = serde_json::from_slice(&body).unwrap_or_default();
            let Some(items) = body["data"].as_array().filter(|_| status == 200) else {
                return Err(ApiError::AgentFailed {
                    node,
                    error: format!("its list {list} answered {status}"),
                });
            };
            let held = holdings.entry(node.clone()).or_default();
            let count = items.len() as u64;
            match *list {
                "/sandboxes" => {
                    held.sandboxes = count;
                    for item in items {
                        let memory_mb = memory_of(&node, item, memory, forward)?;
                        held.memory_mb = held.memory_mb.saturating_add(memory_mb);
                    }
                }
                "/snapshots" => held.snapshots = count,
                _ => held.volumes = count,
            }
        }
    }
    Ok(holdings)
}

/// The memory of a sandbox in `node`'s list. Not in the list (a sandbox made before the
/// label, or an older agent): when the tenant's memory is `bound`, asked of the sandbox
/// itself (not known is not nothing: without it, the quota cannot be checked); else
/// none.
fn memory_of(
    node: &str,
    item: &Value,
    bound: bool,
    forward: &Forward<'_>,
) -> Result<u64, ApiError> {
    if let Some(memory_mb) = item["memory_mb"].as_u64() {
        return Ok(memory_mb);
    }
    if !bound {
        return Ok(0);
    }
    let name = item["name"].as_str().unwrap_or_default();
    let memory_mb = match forward.get(node, &format!("/sandboxes/{name}")) {
        Ok((200, body)) => serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|view| view["data"]["memory_mb"].as_u64()),
        _ => None,
    };
    memory_mb.ok_or_else(|| ApiError::AgentFailed {
        node: node.to_string(),
        error: format!("it does not say sandbox {name}'s memory"),
    })
}

/// The request as it goes on: its headers but those about the connection, its body
/// if it has one (`None`: none, or one that is streamed).
fn forward_of<'a>(
    context: &Context,
    agents: &Arc<Agents>,
    route: &Route,
    head: &'a Head,
    body: Option<&'a [u8]>,
    cancel: &Cancel,
) -> Forward<'a> {
    let headers = head
        .headers
        .iter()
        .filter(|(name, _)| !HOP_BY_HOP.contains(&name.to_ascii_lowercase().as_str()))
        .cloned()
        .collect();
    let has_body = body.is_some_and(|body| {
        !body.is_empty() || !matches!(head.method.as_str(), "GET" | "HEAD" | "DELETE")
    });
    Forward {
        method: &head.method,
        target: &head.target,
        headers,
        body: has_body.then(|| {
            (
                head.header("content-type").unwrap_or("application/json"),
                body.unwrap_or_default(),
            )
        }),
        // A command's whole time, and the edge's wait for its answer.
        timeout: Duration::from_millis(context.config.max_timeout_ms) + Duration::from_secs(60),
        agents: Arc::clone(agents),
        cancel: cancel.clone(),
        http10: head.http10,
        keep_alive: head.keep_alive,
        stopping: None,
        deletes_sandbox: matches!(route, Route::DeleteSandbox(_)),
        holdings: None,
    }
}

fn dispatch(
    context: &Context,
    agents: &Agents,
    route: &Route,
    namespace: &Namespace,
    forward: &Forward<'_>,
    body: &[u8],
    out: &mut TcpStream,
) -> Result<Routed, ApiError> {
    match route {
        Route::OpenApi => Ok(reply_of(super::handlers::get_openapi(context)?)),
        Route::Health => Ok(reply_of(health(context, agents))),
        Route::Metrics => metrics(agents, forward),
        Route::Pool => pool(agents, forward),
        Route::Run | Route::RunStream | Route::BatchRun => to_least_busy(agents, forward, out),
        Route::Backends => to_any(agents, forward, out),
        Route::ListSandboxes | Route::ListSnapshots | Route::ListVolumes => merged(agents, forward),
        Route::CreateSandbox => {
            let body = serde_json::from_slice::<Value>(body).unwrap_or_default();
            match body["name"].as_str().filter(|name| is_name(name)) {
                Some(name) => create(agents, namespace, &body, name, forward, out),
                // The agent says what is wrong with the body.
                None => to_any(agents, forward, out),
            }
        }
        Route::CreateSnapshot => {
            let body = serde_json::from_slice::<Value>(body).unwrap_or_default();
            match body["sandbox"].as_str().filter(|name| is_name(name)) {
                Some(name) => by_name(agents, namespace, name, forward, out),
                None => to_any(agents, forward, out),
            }
        }
        Route::GetSandboxByUuid(uuid) => {
            first_found(agents, &format!("Sandbox '{uuid}'"), forward, out)
        }
        Route::RestoreSnapshot(snapshot) => {
            // A new sandbox, made where the snapshot is: its name must be free on every
            // agent, as a create's.
            let body = serde_json::from_slice::<Value>(body).unwrap_or_default();
            if let Some(name) = body["name"].as_str().filter(|name| is_name(name)) {
                if find(agents, &format!("/sandboxes/{name}"), forward, None)?.is_some() {
                    return Err(crate::error::Error::SandboxExists(name.to_string()).into());
                }
            }
            first_found(agents, &format!("Snapshot '{snapshot}'"), forward, out)
        }
        Route::GetSnapshot(name) | Route::DeleteSnapshot(name) => {
            first_found(agents, &format!("Snapshot '{name}'"), forward, out)
        }
        Route::DeleteVolume(name) => first_found(agents, &format!("Volume '{name}'"), forward, out),
        other => match other.sandbox().map(SandboxName::as_str) {
            Some(name) => by_name(agents, namespace, name, forward, out),
            None => to_any(agents, forward, out),
        },
    }
}

/// Whether a name from a body is one an agent would take (anything else, it answers
/// the 400 itself); never a path of its own.
fn is_name(name: &str) -> bool {
    SandboxName::parse(name).is_ok()
}

/// The key a sandbox is placed and remembered by: names are per namespace.
fn key_of(namespace: &Namespace, name: &str) -> String {
    format!("{}/{name}", namespace.as_str())
}

/// A run: to the agent up with the most warm containers to spare (one taken off its
/// count); one that refuses the connection is marked down and the next tried.
fn to_least_busy(
    agents: &Agents,
    forward: &Forward<'_>,
    out: &mut TcpStream,
) -> Result<Routed, ApiError> {
    to_chosen(agents, forward, out, true)
}

/// A request any agent answers alike (`/backends`, a body it will refuse): as a run
/// goes, but taking no warm container off any count.
fn to_any(agents: &Agents, forward: &Forward<'_>, out: &mut TcpStream) -> Result<Routed, ApiError> {
    to_chosen(agents, forward, out, false)
}

fn to_chosen(
    agents: &Agents,
    forward: &Forward<'_>,
    out: &mut TcpStream,
    takes_warm: bool,
) -> Result<Routed, ApiError> {
    for _ in 0..agents.all().len().max(1) {
        let (node, _in_flight) = agents.for_run(takes_warm).ok_or(ApiError::NoAgent)?;
        match forward.send(&node) {
            Ok(answer) => return Ok(relayed(answer, &node, forward, out)),
            Err(SendError::NotDelivered(error)) => {
                agents.mark_down(&node, &error.to_string());
            }
            Err(error) => return Err(failed(agents, &node, "The request's command", &error)),
        }
    }
    Err(ApiError::NoAgent)
}

/// Sends to `node`, known to be up; a refused connection marks it down (503 naming it).
fn to_node(
    agents: &Agents,
    node: &str,
    what: &str,
    forward: &Forward<'_>,
) -> Result<client::Answer, ApiError> {
    let _in_flight = agents.in_flight(node);
    forward.send(node).map_err(|error| match error {
        SendError::NotDelivered(error) => {
            agents.mark_down(node, &error.to_string());
            ApiError::NodeDown {
                node: node.to_string(),
                what: format!("{what} is"),
            }
        }
        failure => failed(agents, node, what, &failure),
    })
}

/// A request that reached `node` but got no whole answer: a 503 naming it when it was
/// marked down meanwhile (cut off, frozen, dead), else a 502 saying what broke.
fn failed(agents: &Agents, node: &str, what: &str, error: &SendError) -> ApiError {
    if !agents.is_up(node) {
        return ApiError::NodeDown {
            node: node.to_string(),
            what: format!("{what} was"),
        };
    }
    ApiError::AgentFailed {
        node: node.to_string(),
        error: error.to_string(),
    }
}

/// `POST /sandboxes`: to the agent the name hashes to among those up, unless an agent up
/// already has that name (then to it, for its 409); one made from a snapshot goes
/// where the snapshot is (snapshots are images of one engine).
fn create(
    agents: &Agents,
    namespace: &Namespace,
    body: &Value,
    name: &str,
    forward: &Forward<'_>,
    out: &mut TcpStream,
) -> Result<Routed, ApiError> {
    let key = key_of(namespace, name);
    let what = format!("Sandbox '{name}'");
    // Where it most likely is, if it exists: a node that is down may hold the name.
    let all = agents.all();
    if let Some(owner) = crate::cluster::hash::owner(&key, all.iter().map(String::as_str)) {
        if !agents.is_up(owner) {
            return Err(ApiError::NodeDown {
                node: owner.to_string(),
                what: format!("{what} may be"),
            });
        }
    }
    let holder = match find(agents, &format!("/sandboxes/{name}"), forward, None)? {
        Some(holder) => Some(holder),
        None => match body["snapshot"].as_str().filter(|name| is_name(name)) {
            Some(snapshot) => {
                let target = format!("/snapshots/{snapshot}");
                match find(agents, &target, forward, None)? {
                    Some(holder) => Some(holder),
                    None => {
                        unless_down(agents, &format!("Snapshot '{snapshot}'"))?;
                        // No agent has it: any says so, as a single server would.
                        None
                    }
                }
            }
            None => None,
        },
    };
    let target = match holder {
        Some(holder) => holder,
        None => agents.place(&key).ok_or(ApiError::NoAgent)?,
    };
    let answer = to_node(agents, &target, &what, forward)?;
    if answer.head.status == 201 {
        agents.remember(&key, &target);
    }
    Ok(relayed(answer, &target, forward, out))
}

/// The agent up, other than `skip`, that answers `GET target` with 200 (asked all at
/// once, each within `LOOKUP_TIMEOUT`). An agent that could not say is a 503 naming
/// it: what is looked for may be there.
fn find(
    agents: &Agents,
    target: &str,
    forward: &Forward<'_>,
    skip: Option<&str>,
) -> Result<Option<String>, ApiError> {
    let others: Vec<String> = agents
        .up()
        .into_iter()
        .filter(|node| Some(node.as_str()) != skip)
        .collect();
    let mut unsure = Vec::new();
    for (node, answer) in ask_each(&others, forward, target) {
        match answer {
            Ok((200, _)) => return Ok(Some(node)),
            // Not there; or a refusal (a key, a quota, a bad name) that the request
            // itself will meet again and answer with.
            Ok((status, _)) if (400..500).contains(&status) => {}
            _ => unsure.push(node),
        }
    }
    if unsure.is_empty() {
        Ok(None)
    } else {
        Err(ApiError::NodeDown {
            node: unsure.join(", "),
            what: format!("What {target} names may be"),
        })
    }
}

/// A 503 naming the agents down, if any: `what` (none of those up has it) may be on
/// one of them.
fn unless_down(agents: &Agents, what: &str) -> Result<(), ApiError> {
    let down = down_nodes(agents);
    if down.is_empty() {
        return Ok(());
    }
    Err(ApiError::NodeDown {
        node: down.join(", "),
        what: format!("{what} may be"),
    })
}

/// The agents known and down.
fn down_nodes(agents: &Agents) -> Vec<String> {
    agents
        .all()
        .into_iter()
        .filter(|node| !agents.is_up(node))
        .collect()
}

/// A request about sandbox `name`: where it was found last, else where it hashes; on a
/// 404 there that is about the sandbox (the agent does not have it), wherever else it
/// is. A 404 about something in it (a file, a detached command) goes back as it is.
fn by_name(
    agents: &Agents,
    namespace: &Namespace,
    name: &str,
    forward: &Forward<'_>,
    out: &mut TcpStream,
) -> Result<Routed, ApiError> {
    let key = key_of(namespace, name);
    let what = format!("Sandbox '{name}'");
    let sandbox = format!("/sandboxes/{name}");
    let first = match first_choice(agents, &key, &what, &sandbox, forward)? {
        Choice::Moved(holder) => {
            let answer = to_node(agents, &holder, &what, forward)?;
            return Ok(answered(agents, &key, &holder, answer, forward, out));
        }
        Choice::First(first) => first,
    };
    let mut not_found = None;
    if let Some(node) = &first {
        let answer = to_node(agents, node, &what, forward)?;
        let has_it = answer.head.status != 404
            || (forward.target != sandbox && matches!(forward.get(node, &sandbox), Ok((200, _))));
        if has_it {
            return Ok(answered(agents, &key, node, answer, forward, out));
        }
        not_found = Some((node.clone(), answer));
    }
    if let Some(holder) = find(agents, &sandbox, forward, first.as_deref())? {
        let answer = to_node(agents, &holder, &what, forward)?;
        return Ok(answered(agents, &key, &holder, answer, forward, out));
    }
    agents.forget(&key);
    none_found(agents, &what, not_found, forward, out)
}

/// Where to ask first about a sandbox (`key`, `what` and its `GET` target `sandbox`).
enum Choice {
    /// Where it was found last, if that agent is up; else where its name hashes.
    First(Option<String>),
    /// Where it was found last is down, and this agent up has it now (a restarted Swarm
    /// task comes back at another address, with its node's sandboxes).
    Moved(String),
}

/// Where to ask first about a sandbox: see `Choice`. Where it was found last is down
/// and no agent up has it: a 503 naming that node.
fn first_choice(
    agents: &Agents,
    key: &str,
    what: &str,
    sandbox: &str,
    forward: &Forward<'_>,
) -> Result<Choice, ApiError> {
    let known = agents.cached(key);
    if let Some(node) = &known {
        if agents.all().contains(node) && !agents.is_up(node) {
            return match find(agents, sandbox, forward, None)? {
                Some(holder) => Ok(Choice::Moved(holder)),
                None => Err(ApiError::NodeDown {
                    node: node.clone(),
                    what: format!("{what} is"),
                }),
            };
        }
    }
    Ok(Choice::First(
        known
            .filter(|node| agents.is_up(node))
            .or_else(|| agents.place(key)),
    ))
}

/// Relays an answer about sandbox `key` from `node`, and remembers where it is (or,
/// once deleted, forgets it).
fn answered(
    agents: &Agents,
    key: &str,
    node: &str,
    answer: client::Answer,
    forward: &Forward<'_>,
    out: &mut TcpStream,
) -> Routed {
    if forward.deletes_sandbox && answer.head.status == 200 {
        agents.forget(key);
    } else {
        agents.remember(key, node);
    }
    relayed(answer, node, forward, out)
}

/// Asks each agent up in turn; the first answer other than 404 goes back. All 404: the
/// last 404, or a 503 when an agent that is down may hold `what`.
fn first_found(
    agents: &Agents,
    what: &str,
    forward: &Forward<'_>,
    out: &mut TcpStream,
) -> Result<Routed, ApiError> {
    let mut not_found = None;
    for node in agents.up() {
        let answer = to_node(agents, &node, what, forward)?;
        if answer.head.status != 404 {
            return Ok(relayed(answer, &node, forward, out));
        }
        not_found = Some((node, answer));
    }
    none_found(agents, what, not_found, forward, out)
}

/// No agent up has `what`: a 503 naming the agents down (it may be there), else the
/// 404 an agent gave.
fn none_found(
    agents: &Agents,
    what: &str,
    not_found: Option<(String, client::Answer)>,
    forward: &Forward<'_>,
    out: &mut TcpStream,
) -> Result<Routed, ApiError> {
    unless_down(agents, what)?;
    match not_found {
        Some((node, answer)) => Ok(relayed(answer, &node, forward, out)),
        None => Err(ApiError::NoAgent),
    }
}

/// Every agent's list, one list (in the order of the agents, then theirs). An agent's
/// error answer (a 401, a 403) is the answer; agents that are down are named in
/// `X-Agentkernel-Missing-Nodes`.
fn merged(agents: &Agents, forward: &Forward<'_>) -> Result<Routed, ApiError> {
    let up = agents.up();
    if up.is_empty() {
        return Err(ApiError::NoAgent);
    }
    let answers = ask_each(&up, forward, forward.target);
    let mut all = Vec::new();
    for (node, answer) in answers {
        let (status, body) = answer.map_err(|error| failed(agents, &node, "A list", &error))?;
        let body = agent_json(&node, &body)?;
        if status != 200 {
            return Ok(reply_of(Reply::json(status, body)));
        }
        if let Some(items) = body["data"].as_array() {
            all.extend(items.iter().cloned());
        }
    }
    let mut reply = Reply::ok(Value::Array(all));
    let down = down_nodes(agents);
    if !down.is_empty() {
        reply
            .headers
            .push(("X-Agentkernel-Missing-Nodes", down.join(",")));
    }
    Ok(reply_of(reply))
}

/// An agent's answer read whole: its status and body.
type Whole = Result<(u16, Vec<u8>), SendError>;

/// `GET target` of each of `nodes` at once (each within `LOOKUP_TIMEOUT`), with the
/// request's headers, read whole.
fn ask_each(nodes: &[String], forward: &Forward<'_>, target: &str) -> Vec<(String, Whole)> {
    std::thread::scope(|scope| {
        let asks: Vec<_> = nodes
            .iter()
            .map(|node| (node, scope.spawn(move || forward.get(node, target))))
            .collect();
        asks.into_iter()
            .map(|(node, ask)| {
                let answer = ask.join().unwrap_or_else(|_| {
                    Err(SendError::Failed(io::Error::other("the request panicked")))
                });
                (node.clone(), answer)
            })
            .collect()
    })
}

/// `GET /pool`: each agent's pool, by node.
fn pool(agents: &Agents, forward: &Forward<'_>) -> Result<Routed, ApiError> {
    let mut nodes = serde_json::Map::new();
    for (node, answer) in ask_each(&agents.up(), forward, forward.target) {
        let (status, body) = answer.map_err(|error| failed(agents, &node, "A list", &error))?;
        let body: Value = serde_json::from_slice(&body).unwrap_or_default();
        if status != 200 {
            return Ok(reply_of(Reply::json(status, body)));
        }
        nodes.insert(node, body["data"].clone());
    }
    Ok(reply_of(Reply::ok(json!({ "nodes": nodes }))))
}

/// `GET /health`: the router's own, with each agent's state. Up (200) while the router
/// serves; `agents_up` says whether it can do anything.
pub fn health(context: &Context, agents: &Agents) -> Reply {
    use std::sync::atomic::Ordering::SeqCst;
    let states = agents.states();
    let up = agents.up().len();
    Reply::json(
        200,
        json!({
            "success": true,
            "data": "ok",
            "status": if up > 0 { "ok" } else { "no agent up" },
            "mode": "cluster",
            "agents_up": up,
            "agents": states,
            "workers": {
                "configured": context.config.workers,
                "alive": context.edge.workers_alive.load(SeqCst),
            },
            "connections": {
                "open": context.edge.connections.load(SeqCst),
                "max": context.edge.max_connections.load(SeqCst),
            },
        }),
    )
}

/// `GET /metrics`: each agent's samples with an `agent` label, and whether each is up.
fn metrics(agents: &Agents, forward: &Forward<'_>) -> Result<Routed, ApiError> {
    let mut text = String::from(
        "# HELP agentkernel_cluster_agent_up Whether the router reaches the agent.\n\
         # TYPE agentkernel_cluster_agent_up gauge\n",
    );
    for node in agents.all() {
        let up = u8::from(agents.is_up(&node));
        text.push_str(&format!(
            "agentkernel_cluster_agent_up{{agent=\"{node}\"}} {up}\n"
        ));
    }
    let mut described = std::collections::HashSet::new();
    for (node, answer) in ask_each(&agents.up(), forward, forward.target) {
        let Ok((200, body)) = answer else { continue };
        for line in String::from_utf8_lossy(&body).lines() {
            if line.starts_with('#') {
                if described.insert(line.to_string()) {
                    text.push_str(line);
                    text.push('\n');
                }
            } else if !line.is_empty() {
                text.push_str(&labelled(line, &node));
                text.push('\n');
            }
        }
    }
    Ok(reply_of(Reply::text(200, text)))
}

/// A Prometheus sample line with `agent="NODE"` as its first label.
fn labelled(line: &str, node: &str) -> String {
    let label = format!("agent=\"{node}\"");
    match line.find(['{', ' ']) {
        Some(at) if line[at..].starts_with("{}") => {
            format!("{}{{{label}}}{}", &line[..at], &line[at + 2..])
        }
        Some(at) if line[at..].starts_with('{') => {
            format!("{}{{{label},{}", &line[..at], &line[at + 1..])
        }
        Some(at) => format!("{}{{{label}}}{}", &line[..at], &line[at..]),
        None => line.to_string(),
    }
}

/// `relay` for a request routed whole (`forward`).
fn relayed(
    answer: client::Answer,
    node: &str,
    forward: &Forward<'_>,
    out: &mut TcpStream,
) -> Routed {
    let stopping = forward
        .stopping
        .is_some_and(|stopping| stopping.load(std::sync::atomic::Ordering::SeqCst));
    let keep_alive = forward.keep_alive && !stopping;
    let (status, reusable) = relay(answer, node, forward.http10, keep_alive, out);
    Routed::Proxied { status, reusable }
}

/// Writes an agent's answer to the client as it comes: its status and headers (but
/// those about the connection, and any that are not clean `name: value` text), then
/// `X-Agentkernel-Node`, then its body, flushed as it arrives (event streams go out
/// event by event). A body of unknown length goes out chunked to HTTP/1.1 clients, and
/// one the agent broke off is never ended cleanly: the client can tell it is cut.
/// Gives the status, and whether the connection may serve the client's next request:
/// when `keep_alive` (an HTTP/1.1 client that asked for it) and the answer went out
/// whole, framed (else the answer says `connection: close`, or was cut).
fn relay(
    answer: client::Answer,
    node: &str,
    http10: bool,
    keep_alive: bool,
    out: &mut TcpStream,
) -> (u16, bool) {
    use crate::engine::http::BodyFraming;
    let status = answer.head.status;
    let mut head = format!("HTTP/1.1 {status} {}\r\n", super::http::reason(status));
    for (name, value) in &answer.head.headers {
        let passed = !HOP_BY_HOP.contains(&name.as_str()) || name == "content-type";
        if passed
            && is_token(name)
            && value
                .bytes()
                .all(|b| b == b'\t' || (b' '..0x7f).contains(&b))
        {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    let chunked = match answer.framing {
        BodyFraming::ContentLength(length) => {
            head.push_str(&format!("content-length: {length}\r\n"));
            false
        }
        BodyFraming::None => false,
        BodyFraming::Chunked | BodyFraming::UntilEof => !http10,
    };
    if chunked {
        head.push_str("transfer-encoding: chunked\r\n");
    }
    // Framed by the agent (a length, chunks, or no body at all): the connection may go
    // on. (One that ran until the agent closed goes out chunked, but whether it was cut
    // is not known: the connection is closed after it.)
    let keep = keep_alive && !http10 && !matches!(answer.framing, BodyFraming::UntilEof);
    let length = match answer.framing {
        BodyFraming::ContentLength(length) => length,
        _ => 0,
    };
    let mut relayed = 0u64;
    head.push_str(&format!(
        "x-agentkernel-node: {node}\r\nconnection: {}\r\n\r\n",
        if keep { "keep-alive" } else { "close" }
    ));
    if out.write_all(head.as_bytes()).is_err() {
        return (status, false);
    }
    let mut whole = false;
    let mut body = answer.body();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let count = match body.read(&mut buffer) {
            Ok(0) => {
                // Whole: ended with its last chunk, or every byte its length said.
                whole = if chunked {
                    out.write_all(b"0\r\n\r\n")
                        .and_then(|()| out.flush())
                        .is_ok()
                } else {
                    out.flush().is_ok() && relayed == length
                };
                break;
            }
            Ok(count) => {
                relayed += count as u64;
                count
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                log::warn!("cluster: the answer of node {node} broke off: {error}");
                break;
            }
        };
        let written = if chunked {
            out.write_all(format!("{count:x}\r\n").as_bytes())
                .and_then(|()| out.write_all(&buffer[..count]))
                .and_then(|()| out.write_all(b"\r\n"))
        } else {
            out.write_all(&buffer[..count])
        };
        // The client went away: dropping the agent's connection tells it.
        if written.and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    (status, keep && whole)
}

/// An HTTP token (RFC 9110): what a header name may be.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent answering `answer` (then closing), and a client connection: what the
    /// relay wrote to the client, and whether it says the connection may go on.
    fn relay_of(answer: &'static [u8], http10: bool) -> (String, bool) {
        use std::net::TcpListener;
        let answer = client::tests::answer_to_get(answer).unwrap();
        let client = TcpListener::bind("127.0.0.1:0").unwrap();
        let reader = std::thread::spawn({
            let address = client.local_addr().unwrap();
            move || {
                let mut stream = TcpStream::connect(address).unwrap();
                let mut text = String::new();
                let _ = stream.read_to_string(&mut text);
                text
            }
        });
        let (mut out, _) = client.accept().unwrap();
        let (_, reusable) = relay(answer, "n:1", http10, true, &mut out);
        drop(out);
        (reader.join().unwrap(), reusable)
    }

    #[test]
    fn only_an_answer_relayed_whole_keeps_the_connection() {
        let (text, reusable) =
            relay_of(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false);
        assert!(
            reusable && text.contains("connection: keep-alive") && text.ends_with("hello"),
            "{text}"
        );
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        let (text, reusable) = relay_of(chunked, false);
        assert!(
            reusable && text.ends_with("5\r\nhello\r\n0\r\n\r\n"),
            "{text}"
        );
        // Cut short: fewer bytes than its length, or chunks without their end.
        let (text, reusable) = relay_of(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel", false);
        assert!(!reusable, "{text}");
        let cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
        let (text, reusable) = relay_of(cut, false);
        assert!(!reusable && !text.ends_with("0\r\n\r\n"), "{text}");
        // Until the agent closes, to HTTP/1.1: chunked, but closed (whether it was cut is
        // not known). To HTTP/1.0: as it came, closed.
        let (text, reusable) = relay_of(b"HTTP/1.1 200 OK\r\n\r\nhello", false);
        assert!(
            !reusable && text.contains("transfer-encoding: chunked") && text.contains("close"),
            "{text}"
        );
        let (text, reusable) = relay_of(b"HTTP/1.1 200 OK\r\n\r\nhello", true);
        assert!(!reusable && text.contains("connection: close"), "{text}");
    }

    #[test]
    fn a_count_lock_held_elsewhere_is_waited_for_a_bounded_time() {
        let mutex = std::sync::Mutex::new(());
        let held = mutex.lock().unwrap();
        let started = Instant::now();
        assert!(lock_within(&mutex, Duration::from_millis(100)).is_none());
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(held);
        assert!(lock_within(&mutex, Duration::from_millis(100)).is_some());
    }

    #[test]
    fn samples_get_the_agent_label_first() {
        assert_eq!(labelled("up 1", "a:1"), "up{agent=\"a:1\"} 1");
        assert_eq!(
            labelled("runs_total{status=\"ok\"} 3", "a:1"),
            "runs_total{agent=\"a:1\",status=\"ok\"} 3"
        );
        assert_eq!(labelled("x{} 2", "a:1"), "x{agent=\"a:1\"} 2");
    }
}
