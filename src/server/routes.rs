//! Routing: one `match` on (method, path segments) turning a request line into a typed
//! `Route`, with explicit 404 and 405 answers. No router crate.
//!
//! Invariants: path parameters come out already validated (a `SandboxName` is a valid
//! name), so handlers never see raw strings; the query string is ignored.

use crate::containers::labels::SandboxName;
use crate::files::SandboxPath;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The OpenAPI description of the server (`src/server/openapi.json`).
    OpenApi,
    Health,
    Backends,
    Pool,
    Run,
    RunStream,
    BatchRun,
    ListSandboxes,
    CreateSandbox,
    GetSandbox(SandboxName),
    GetSandboxByUuid(String),
    ExtendSandbox(SandboxName),
    DeleteSandbox(SandboxName),
    ExecSandbox(SandboxName),
    ExecSandboxStream(SandboxName),
    ExecDetach(SandboxName),
    DetachedList(SandboxName),
    DetachedStatus(SandboxName, String),
    DetachedKill(SandboxName, String),
    /// `stderr_only` from `?stream=stderr`, as the SDKs ask.
    DetachedLogs {
        sandbox: SandboxName,
        id: String,
        stderr_only: bool,
    },
    StartSandbox(SandboxName),
    StopSandbox(SandboxName),
    PauseSandbox(SandboxName),
    ResumeSandbox(SandboxName),
    SandboxLogs(SandboxName),
    SandboxStats(SandboxName),
    GetSandboxFile(SandboxName, SandboxPath),
    PutSandboxFile(SandboxName, SandboxPath),
    DeleteSandboxFile(SandboxName, SandboxPath),
    PostSandboxFiles(SandboxName),
    ListSnapshots,
    CreateSnapshot,
    /// Snapshot names follow the sandbox name rule.
    GetSnapshot(SandboxName),
    DeleteSnapshot(SandboxName),
    RestoreSnapshot(SandboxName),
    /// Prometheus text (`server::metrics`).
    Metrics,
    /// `?path=DIR`: a directory as a tar archive, out and in.
    GetArchive(SandboxName, SandboxPath),
    PutArchive(SandboxName, SandboxPath),
    ListVolumes,
    /// Volume names follow the sandbox name rule.
    DeleteVolume(SandboxName),
}

impl Route {
    /// The sandbox the route names in its path, if it names one (an exhaustive `match`:
    /// a new route is placed here before it compiles). The router places requests by
    /// it, and the server tells a request's failures in that sandbox's terms.
    pub fn sandbox(&self) -> Option<&SandboxName> {
        match self {
            Route::GetSandbox(name)
            | Route::ExtendSandbox(name)
            | Route::DeleteSandbox(name)
            | Route::ExecSandbox(name)
            | Route::ExecSandboxStream(name)
            | Route::ExecDetach(name)
            | Route::DetachedList(name)
            | Route::DetachedStatus(name, _)
            | Route::DetachedKill(name, _)
            | Route::DetachedLogs { sandbox: name, .. }
            | Route::StartSandbox(name)
            | Route::StopSandbox(name)
            | Route::PauseSandbox(name)
            | Route::ResumeSandbox(name)
            | Route::SandboxLogs(name)
            | Route::SandboxStats(name)
            | Route::GetSandboxFile(name, _)
            | Route::PutSandboxFile(name, _)
            | Route::DeleteSandboxFile(name, _)
            | Route::PostSandboxFiles(name)
            | Route::GetArchive(name, _)
            | Route::PutArchive(name, _) => Some(name),
            Route::OpenApi
            | Route::Health
            | Route::Backends
            | Route::Pool
            | Route::Run
            | Route::RunStream
            | Route::BatchRun
            | Route::ListSandboxes
            | Route::CreateSandbox
            | Route::GetSandboxByUuid(_)
            | Route::ListSnapshots
            | Route::CreateSnapshot
            | Route::GetSnapshot(_)
            | Route::DeleteSnapshot(_)
            | Route::RestoreSnapshot(_)
            | Route::Metrics
            | Route::ListVolumes
            | Route::DeleteVolume(_) => None,
        }
    }

    /// The method and path that `parse` turns into this route (`GET` for `Health`, which
    /// `HEAD` reaches too): how the command line's remote mode sends a request.
    pub fn target(&self) -> (&'static str, String) {
        let sandbox = |name: &SandboxName, rest: &str| format!("/sandboxes/{name}{rest}");
        let file = |name: &SandboxName, path: &SandboxPath| {
            sandbox(
                name,
                &format!("/files{}", percent_encode_path(path.as_str())),
            )
        };
        match self {
            Route::OpenApi => ("GET", "/openapi.json".into()),
            Route::Health => ("GET", "/health".into()),
            Route::Backends => ("GET", "/backends".into()),
            Route::Pool => ("GET", "/pool".into()),
            Route::Run => ("POST", "/run".into()),
            Route::RunStream => ("POST", "/run/stream".into()),
            Route::BatchRun => ("POST", "/batch/run".into()),
            Route::ListSandboxes => ("GET", "/sandboxes".into()),
            Route::CreateSandbox => ("POST", "/sandboxes".into()),
            Route::GetSandbox(name) => ("GET", sandbox(name, "")),
            Route::GetSandboxByUuid(uuid) => ("GET", format!("/sandboxes/by-uuid/{uuid}")),
            Route::ExtendSandbox(name) => ("POST", sandbox(name, "/extend")),
            Route::DeleteSandbox(name) => ("DELETE", sandbox(name, "")),
            Route::ExecSandbox(name) => ("POST", sandbox(name, "/exec")),
            Route::ExecSandboxStream(name) => ("POST", sandbox(name, "/exec/stream")),
            Route::ExecDetach(name) => ("POST", sandbox(name, "/exec/detach")),
            Route::DetachedList(name) => ("GET", sandbox(name, "/exec/detached")),
            Route::DetachedStatus(name, id) => {
                ("GET", sandbox(name, &format!("/exec/detached/{id}")))
            }
            Route::DetachedKill(name, id) => {
                ("DELETE", sandbox(name, &format!("/exec/detached/{id}")))
            }
            Route::DetachedLogs {
                sandbox: name,
                id,
                stderr_only,
            } => {
                let query = if *stderr_only { "?stream=stderr" } else { "" };
                (
                    "GET",
                    sandbox(name, &format!("/exec/detached/{id}/logs{query}")),
                )
            }
            Route::StartSandbox(name) => ("POST", sandbox(name, "/start")),
            Route::StopSandbox(name) => ("POST", sandbox(name, "/stop")),
            Route::PauseSandbox(name) => ("POST", sandbox(name, "/pause")),
            Route::ResumeSandbox(name) => ("POST", sandbox(name, "/resume")),
            Route::SandboxLogs(name) => ("GET", sandbox(name, "/logs")),
            Route::SandboxStats(name) => ("GET", sandbox(name, "/stats")),
            Route::GetSandboxFile(name, path) => ("GET", file(name, path)),
            Route::PutSandboxFile(name, path) => ("PUT", file(name, path)),
            Route::DeleteSandboxFile(name, path) => ("DELETE", file(name, path)),
            Route::PostSandboxFiles(name) => ("POST", sandbox(name, "/files")),
            Route::ListSnapshots => ("GET", "/snapshots".into()),
            Route::CreateSnapshot => ("POST", "/snapshots".into()),
            Route::GetSnapshot(name) => ("GET", format!("/snapshots/{name}")),
            Route::DeleteSnapshot(name) => ("DELETE", format!("/snapshots/{name}")),
            Route::RestoreSnapshot(name) => ("POST", format!("/snapshots/{name}/restore")),
            Route::Metrics => ("GET", "/metrics".into()),
            Route::GetArchive(name, dir) => (
                "GET",
                sandbox(
                    name,
                    &format!("/archive?path={}", percent_encode_path(dir.as_str())),
                ),
            ),
            Route::ListVolumes => ("GET", "/volumes".into()),
            Route::DeleteVolume(name) => ("DELETE", format!("/volumes/{name}")),
            Route::PutArchive(name, dir) => (
                "PUT",
                sandbox(
                    name,
                    &format!("/archive?path={}", percent_encode_path(dir.as_str())),
                ),
            ),
        }
    }
}

impl Route {
    /// The OpenAPI operation this route is: (method, path template), as metrics label
    /// it. An exhaustive `match`, so that a new variant does not compile until it is
    /// placed in the document (`every_route_is_documented`).
    pub fn operation(&self) -> (&'static str, &'static str) {
        match self {
            Route::OpenApi => ("get", "/openapi.json"),
            Route::Health => ("get", "/health"),
            Route::Backends => ("get", "/backends"),
            Route::Pool => ("get", "/pool"),
            Route::Run => ("post", "/run"),
            Route::RunStream => ("post", "/run/stream"),
            Route::BatchRun => ("post", "/batch/run"),
            Route::ListSandboxes => ("get", "/sandboxes"),
            Route::CreateSandbox => ("post", "/sandboxes"),
            Route::GetSandbox(_) => ("get", "/sandboxes/{name}"),
            Route::GetSandboxByUuid(_) => ("get", "/sandboxes/by-uuid/{uuid}"),
            Route::ExtendSandbox(_) => ("post", "/sandboxes/{name}/extend"),
            Route::DeleteSandbox(_) => ("delete", "/sandboxes/{name}"),
            Route::ExecSandbox(_) => ("post", "/sandboxes/{name}/exec"),
            Route::ExecSandboxStream(_) => ("post", "/sandboxes/{name}/exec/stream"),
            Route::ExecDetach(_) => ("post", "/sandboxes/{name}/exec/detach"),
            Route::DetachedList(_) => ("get", "/sandboxes/{name}/exec/detached"),
            Route::DetachedStatus(..) => ("get", "/sandboxes/{name}/exec/detached/{id}"),
            Route::DetachedKill(..) => ("delete", "/sandboxes/{name}/exec/detached/{id}"),
            Route::DetachedLogs { .. } => ("get", "/sandboxes/{name}/exec/detached/{id}/logs"),
            Route::StartSandbox(_) => ("post", "/sandboxes/{name}/start"),
            Route::StopSandbox(_) => ("post", "/sandboxes/{name}/stop"),
            Route::PauseSandbox(_) => ("post", "/sandboxes/{name}/pause"),
            Route::ResumeSandbox(_) => ("post", "/sandboxes/{name}/resume"),
            Route::SandboxLogs(_) => ("get", "/sandboxes/{name}/logs"),
            Route::SandboxStats(_) => ("get", "/sandboxes/{name}/stats"),
            Route::GetSandboxFile(..) => ("get", "/sandboxes/{name}/files/{path}"),
            Route::PutSandboxFile(..) => ("put", "/sandboxes/{name}/files/{path}"),
            Route::DeleteSandboxFile(..) => ("delete", "/sandboxes/{name}/files/{path}"),
            Route::PostSandboxFiles(_) => ("post", "/sandboxes/{name}/files"),
            Route::ListSnapshots => ("get", "/snapshots"),
            Route::CreateSnapshot => ("post", "/snapshots"),
            Route::GetSnapshot(_) => ("get", "/snapshots/{name}"),
            Route::DeleteSnapshot(_) => ("delete", "/snapshots/{name}"),
            Route::RestoreSnapshot(_) => ("post", "/snapshots/{name}/restore"),
            Route::Metrics => ("get", "/metrics"),
            Route::GetArchive(..) => ("get", "/sandboxes/{name}/archive"),
            Route::PutArchive(..) => ("put", "/sandboxes/{name}/archive"),
            Route::ListVolumes => ("get", "/volumes"),
            Route::DeleteVolume(_) => ("delete", "/volumes/{name}"),
        }
    }
}

/// A path with every byte but `/` and RFC 3986's unreserved ones percent-encoded, so
/// that `parse` (which decodes file paths) reads back the same path.
fn percent_encode_path(path: &str) -> String {
    let mut encoded = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'/' | b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The `path` query parameter of an archive route: the directory, percent-decoded and
/// checked like a file path (absolute, no `..`, not the root).
fn archive_dir(url: &str) -> Result<SandboxPath, RouteError> {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let query = query.split('#').next().unwrap_or_default();
    let value = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("path="))
        .ok_or_else(|| {
            RouteError::BadParameter("path is required: the directory, as ?path=/some/dir".into())
        })?;
    SandboxPath::from_url(value).map_err(RouteError::BadParameter)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    NotFound(String),
    /// The path exists but not with this method; `allowed` is for the `Allow` header.
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: &'static str,
    },
    /// A path parameter is malformed (a bad sandbox name).
    BadParameter(String),
}

/// A container id or a prefix of one: 12 to 64 lowercase hex digits.
fn is_hex_id(text: &str) -> bool {
    (12..=64).contains(&text.len()) && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub fn parse(method: &str, url: &str) -> Result<Route, RouteError> {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    // One trailing slash is tolerated: `/sandboxes/` is `/sandboxes`.
    let trimmed = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    let segments: Vec<&str> = trimmed
        .strip_prefix('/')
        .unwrap_or(trimmed)
        .split('/')
        .collect();
    let name = |text: &str| SandboxName::parse(text).map_err(RouteError::BadParameter);
    let snapshot = |text: &str| {
        SandboxName::parse(text).map_err(|message| {
            RouteError::BadParameter(message.replacen("sandbox name", "snapshot name", 1))
        })
    };
    // A file path keeps its own slashes (and empty segments): it is all of the path after
    // `/sandboxes/{name}/files/`, percent-decoded, which `SandboxPath` then normalises.
    let file = |sandbox: &str| {
        let relative = trimmed.strip_prefix('/').unwrap_or(trimmed);
        let start = "sandboxes/".len() + sandbox.len() + "/files/".len();
        SandboxPath::from_url(&relative[start..]).map_err(RouteError::BadParameter)
    };
    let not_allowed = |allowed: &'static str| RouteError::MethodNotAllowed {
        method: method.to_string(),
        path: path.to_string(),
        allowed,
    };
    match (method, segments.as_slice()) {
        ("GET", ["openapi.json"]) => Ok(Route::OpenApi),
        (_, ["openapi.json"]) => Err(not_allowed("GET")),
        ("GET" | "HEAD", ["health"]) => Ok(Route::Health),
        (_, ["health"]) => Err(not_allowed("GET")),
        ("GET", ["backends"]) => Ok(Route::Backends),
        (_, ["backends"]) => Err(not_allowed("GET")),
        ("GET", ["pool"]) => Ok(Route::Pool),
        ("GET", ["metrics"]) => Ok(Route::Metrics),
        (_, ["metrics"]) => Err(not_allowed("GET")),
        (_, ["pool"]) => Err(not_allowed("GET")),
        ("POST", ["run"]) => Ok(Route::Run),
        (_, ["run"]) => Err(not_allowed("POST")),
        ("POST", ["run", "stream"]) => Ok(Route::RunStream),
        ("POST", ["batch", "run"]) => Ok(Route::BatchRun),
        (_, ["batch", "run"]) => Err(not_allowed("POST")),
        (_, ["run", "stream"]) => Err(not_allowed("POST")),
        ("GET", ["sandboxes"]) => Ok(Route::ListSandboxes),
        ("POST", ["sandboxes"]) => Ok(Route::CreateSandbox),
        (_, ["sandboxes"]) => Err(not_allowed("GET, POST")),
        ("GET", ["sandboxes", "by-uuid", uuid]) if is_hex_id(uuid) => {
            Ok(Route::GetSandboxByUuid(uuid.to_string()))
        }
        ("POST", ["sandboxes", sandbox, "extend"]) => Ok(Route::ExtendSandbox(name(sandbox)?)),
        (_, ["sandboxes", _, "extend"]) => Err(not_allowed("POST")),
        ("GET", ["sandboxes", sandbox]) => Ok(Route::GetSandbox(name(sandbox)?)),
        ("DELETE", ["sandboxes", sandbox]) => Ok(Route::DeleteSandbox(name(sandbox)?)),
        (_, ["sandboxes", _]) => Err(not_allowed("GET, DELETE")),
        ("POST", ["sandboxes", sandbox, "exec"]) => Ok(Route::ExecSandbox(name(sandbox)?)),
        ("POST", ["sandboxes", sandbox, "start"]) => Ok(Route::StartSandbox(name(sandbox)?)),
        ("POST", ["sandboxes", sandbox, "stop"]) => Ok(Route::StopSandbox(name(sandbox)?)),
        ("POST", ["sandboxes", sandbox, "pause"]) => Ok(Route::PauseSandbox(name(sandbox)?)),
        ("POST", ["sandboxes", sandbox, "resume"]) => Ok(Route::ResumeSandbox(name(sandbox)?)),
        (_, ["sandboxes", _, "exec" | "start" | "stop" | "pause" | "resume"]) => {
            Err(not_allowed("POST"))
        }
        ("POST", ["sandboxes", sandbox, "exec", "stream"]) => {
            Ok(Route::ExecSandboxStream(name(sandbox)?))
        }
        (_, ["sandboxes", _, "exec", "stream"]) => Err(not_allowed("POST")),
        ("POST", ["sandboxes", sandbox, "exec", "detach"]) => Ok(Route::ExecDetach(name(sandbox)?)),
        (_, ["sandboxes", _, "exec", "detach"]) => Err(not_allowed("POST")),
        ("GET", ["sandboxes", sandbox, "exec", "detached"]) => {
            Ok(Route::DetachedList(name(sandbox)?))
        }
        (_, ["sandboxes", _, "exec", "detached"]) => Err(not_allowed("GET")),
        ("GET", ["sandboxes", sandbox, "exec", "detached", id]) => {
            Ok(Route::DetachedStatus(name(sandbox)?, id.to_string()))
        }
        ("DELETE", ["sandboxes", sandbox, "exec", "detached", id]) => {
            Ok(Route::DetachedKill(name(sandbox)?, id.to_string()))
        }
        (_, ["sandboxes", _, "exec", "detached", _]) => Err(not_allowed("GET, DELETE")),
        ("GET", ["sandboxes", sandbox, "exec", "detached", id, "logs"]) => {
            let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
            Ok(Route::DetachedLogs {
                sandbox: name(sandbox)?,
                id: id.to_string(),
                stderr_only: query.split('&').any(|pair| pair == "stream=stderr"),
            })
        }
        (_, ["sandboxes", _, "exec", "detached", _, "logs"]) => Err(not_allowed("GET")),
        ("GET", ["sandboxes", sandbox, "logs"]) => Ok(Route::SandboxLogs(name(sandbox)?)),
        (_, ["sandboxes", _, "logs"]) => Err(not_allowed("GET")),
        ("GET", ["sandboxes", sandbox, "archive"]) => {
            Ok(Route::GetArchive(name(sandbox)?, archive_dir(url)?))
        }
        ("PUT", ["sandboxes", sandbox, "archive"]) => {
            Ok(Route::PutArchive(name(sandbox)?, archive_dir(url)?))
        }
        (_, ["sandboxes", _, "archive"]) => Err(not_allowed("GET, PUT")),
        ("GET", ["sandboxes", sandbox, "stats"]) => Ok(Route::SandboxStats(name(sandbox)?)),
        (_, ["sandboxes", _, "stats"]) => Err(not_allowed("GET")),
        ("POST", ["sandboxes", sandbox, "files"]) => Ok(Route::PostSandboxFiles(name(sandbox)?)),
        (_, ["sandboxes", _, "files"]) => Err(not_allowed("POST")),
        ("GET", ["sandboxes", sandbox, "files", _, ..]) => {
            Ok(Route::GetSandboxFile(name(sandbox)?, file(sandbox)?))
        }
        ("PUT", ["sandboxes", sandbox, "files", _, ..]) => {
            Ok(Route::PutSandboxFile(name(sandbox)?, file(sandbox)?))
        }
        ("DELETE", ["sandboxes", sandbox, "files", _, ..]) => {
            Ok(Route::DeleteSandboxFile(name(sandbox)?, file(sandbox)?))
        }
        (_, ["sandboxes", _, "files", _, ..]) => Err(not_allowed("GET, PUT, DELETE")),
        ("GET", ["volumes"]) => Ok(Route::ListVolumes),
        (_, ["volumes"]) => Err(not_allowed("GET")),
        ("DELETE", ["volumes", volume]) => Ok(Route::DeleteVolume(
            SandboxName::parse(volume).map_err(|message| {
                RouteError::BadParameter(message.replacen("sandbox name", "volume name", 1))
            })?,
        )),
        (_, ["volumes", _]) => Err(not_allowed("DELETE")),
        ("GET", ["snapshots"]) => Ok(Route::ListSnapshots),
        ("POST", ["snapshots"]) => Ok(Route::CreateSnapshot),
        (_, ["snapshots"]) => Err(not_allowed("GET, POST")),
        ("GET", ["snapshots", name]) => Ok(Route::GetSnapshot(snapshot(name)?)),
        ("DELETE", ["snapshots", name]) => Ok(Route::DeleteSnapshot(snapshot(name)?)),
        (_, ["snapshots", _]) => Err(not_allowed("GET, DELETE")),
        ("POST", ["snapshots", name, "restore"]) => Ok(Route::RestoreSnapshot(snapshot(name)?)),
        (_, ["snapshots", _, "restore"]) => Err(not_allowed("POST")),
        _ => Err(RouteError::NotFound(path.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> SandboxName {
        SandboxName::parse(text).unwrap()
    }

    #[test]
    fn routes_every_endpoint() {
        let cases = [
            ("GET", "/health", Route::Health),
            ("GET", "/pool", Route::Pool),
            ("GET", "/backends", Route::Backends),
            (
                "GET",
                "/sandboxes/by-uuid/0123456789ab",
                Route::GetSandboxByUuid("0123456789ab".into()),
            ),
            (
                "GET",
                "/sandboxes/by-uuid/logs",
                Route::SandboxLogs(name("by-uuid")),
            ),
            (
                "POST",
                "/sandboxes/b/extend",
                Route::ExtendSandbox(name("b")),
            ),
            ("POST", "/run", Route::Run),
            ("POST", "/run/stream", Route::RunStream),
            ("POST", "/batch/run", Route::BatchRun),
            ("GET", "/sandboxes/b/logs", Route::SandboxLogs(name("b"))),
            (
                "POST",
                "/sandboxes/b/exec/stream",
                Route::ExecSandboxStream(name("b")),
            ),
            ("GET", "/sandboxes", Route::ListSandboxes),
            ("GET", "/sandboxes/?x=1", Route::ListSandboxes),
            ("POST", "/sandboxes", Route::CreateSandbox),
            ("GET", "/sandboxes/box-1", Route::GetSandbox(name("box-1"))),
            (
                "DELETE",
                "/sandboxes/box-1",
                Route::DeleteSandbox(name("box-1")),
            ),
            ("POST", "/sandboxes/b/exec", Route::ExecSandbox(name("b"))),
            ("POST", "/sandboxes/b/start", Route::StartSandbox(name("b"))),
            ("POST", "/sandboxes/b/stop", Route::StopSandbox(name("b"))),
        ];
        for (method, url, route) in cases {
            assert_eq!(parse(method, url), Ok(route), "{method} {url}");
        }
    }

    #[test]
    fn answers_404_and_405_explicitly() {
        assert_eq!(
            parse("GET", "/nope"),
            Err(RouteError::NotFound("/nope".into()))
        );
        assert_eq!(parse("GET", "/"), Err(RouteError::NotFound("/".into())));
        assert!(matches!(
            parse("GET", "/sandboxes/b/exec/more"),
            Err(RouteError::NotFound(_))
        ));
        assert_eq!(
            parse("DELETE", "/run"),
            Err(RouteError::MethodNotAllowed {
                method: "DELETE".into(),
                path: "/run".into(),
                allowed: "POST"
            })
        );
        assert!(matches!(
            parse("PUT", "/sandboxes/b"),
            Err(RouteError::MethodNotAllowed {
                allowed: "GET, DELETE",
                ..
            })
        ));
    }

    #[test]
    fn file_routes_take_the_rest_of_the_path_as_an_absolute_path() {
        let file = |text: &str| SandboxPath::parse(text).unwrap();
        let cases = [
            (
                "GET",
                "/sandboxes/b/files/tmp/x",
                Route::GetSandboxFile(name("b"), file("/tmp/x")),
            ),
            (
                "GET",
                "/sandboxes/b/files//tmp/x",
                Route::GetSandboxFile(name("b"), file("/tmp/x")),
            ),
            (
                "PUT",
                "/sandboxes/b/files/tmp/a%20b/./c/?q=1",
                Route::PutSandboxFile(name("b"), file("/tmp/a b/c")),
            ),
            (
                "DELETE",
                "/sandboxes/b/files/files/x",
                Route::DeleteSandboxFile(name("b"), file("/files/x")),
            ),
            (
                "POST",
                "/sandboxes/b/files",
                Route::PostSandboxFiles(name("b")),
            ),
            (
                "POST",
                "/sandboxes/b/files/",
                Route::PostSandboxFiles(name("b")),
            ),
        ];
        for (method, url, route) in cases {
            assert_eq!(parse(method, url), Ok(route), "{method} {url}");
        }
        for url in [
            "/sandboxes/b/files/tmp/../etc/passwd",
            "/sandboxes/b/files/tmp/%2e%2e/x",
            "/sandboxes/b/files/tmp/%00",
            "/sandboxes/b/files//",
            "/sandboxes/-b/files/tmp/x",
        ] {
            assert!(
                matches!(parse("GET", url), Err(RouteError::BadParameter(_))),
                "{url}"
            );
        }
        assert!(matches!(
            parse("POST", "/sandboxes/b/files/tmp/x"),
            Err(RouteError::MethodNotAllowed {
                allowed: "GET, PUT, DELETE",
                ..
            })
        ));
        assert!(matches!(
            parse("GET", "/sandboxes/b/files"),
            Err(RouteError::MethodNotAllowed {
                allowed: "POST",
                ..
            })
        ));
    }

    #[test]
    fn refuses_bad_sandbox_names() {
        for url in [
            "/sandboxes/-x",
            "/sandboxes/a%2Fb",
            "/sandboxes/..",
            "/sandboxes/a b",
        ] {
            assert!(
                matches!(parse("GET", url), Err(RouteError::BadParameter(_))),
                "{url}"
            );
        }
    }

    fn operation_of(route: &Route) -> (&'static str, &'static str) {
        route.operation()
    }

    /// Every (method, path template) of the document, with `head` where a `get` also
    /// answers it.
    fn documented_operations() -> Vec<(String, String)> {
        let document: serde_json::Value =
            serde_json::from_str(crate::server::handlers::OPENAPI).expect("openapi.json is JSON");
        assert_eq!(document["openapi"], "3.1.0");
        let mut operations = Vec::new();
        for (template, item) in document["paths"].as_object().expect("paths") {
            for (method, _) in item.as_object().expect("a path item") {
                operations.push((method.clone(), template.clone()));
            }
        }
        operations.sort();
        operations
    }

    /// A path template with example parameters.
    fn example_url(template: &str) -> String {
        let url = template
            .replace("{name}", "st-box")
            .replace("{uuid}", "0123456789ab")
            .replace("{id}", "0123456789abcdef")
            .replace("{path}", "tmp/dir/hello.txt");
        // The archive routes' required query parameter.
        if url.ends_with("/archive") {
            url + "?path=/work"
        } else {
            url
        }
    }

    #[test]
    fn every_documented_operation_is_routed_to_itself() {
        let operations = documented_operations();
        assert!(operations.len() > 20, "{operations:?}");
        for (method, template) in &operations {
            let url = example_url(template);
            let route = parse(&method.to_uppercase(), &url)
                .unwrap_or_else(|error| panic!("{method} {url}: {error:?}"));
            let expected = if method == "head" { "get" } else { method };
            assert_eq!(
                operation_of(&route),
                (expected, template.as_str()),
                "{method} {url}"
            );
        }
    }

    #[test]
    fn every_route_is_documented() {
        let operations = documented_operations();
        // One request per variant: `operation_of` is exhaustive, so a variant added
        // without a sample here is caught by the comparison below.
        let samples = [
            ("GET", "/openapi.json"),
            ("GET", "/health"),
            ("GET", "/backends"),
            ("GET", "/pool"),
            ("POST", "/run"),
            ("POST", "/run/stream"),
            ("POST", "/batch/run"),
            ("GET", "/sandboxes"),
            ("POST", "/sandboxes"),
            ("GET", "/sandboxes/b"),
            ("GET", "/sandboxes/by-uuid/0123456789abcdef"),
            ("POST", "/sandboxes/b/extend"),
            ("DELETE", "/sandboxes/b"),
            ("POST", "/sandboxes/b/exec"),
            ("POST", "/sandboxes/b/exec/stream"),
            ("POST", "/sandboxes/b/exec/detach"),
            ("GET", "/sandboxes/b/exec/detached"),
            ("GET", "/sandboxes/b/exec/detached/0123456789abcdef"),
            ("DELETE", "/sandboxes/b/exec/detached/0123456789abcdef"),
            (
                "GET",
                "/sandboxes/b/exec/detached/0123456789abcdef/logs?stream=stderr",
            ),
            ("POST", "/sandboxes/b/start"),
            ("POST", "/sandboxes/b/stop"),
            ("POST", "/sandboxes/b/pause"),
            ("POST", "/sandboxes/b/resume"),
            ("GET", "/sandboxes/b/logs"),
            ("GET", "/sandboxes/b/stats"),
            ("GET", "/sandboxes/b/files/tmp/x"),
            ("PUT", "/sandboxes/b/files/tmp/x"),
            ("DELETE", "/sandboxes/b/files/tmp/x"),
            ("POST", "/sandboxes/b/files"),
            ("GET", "/snapshots"),
            ("POST", "/snapshots"),
            ("GET", "/snapshots/s"),
            ("DELETE", "/snapshots/s"),
            ("POST", "/snapshots/s/restore"),
            ("GET", "/metrics"),
            ("GET", "/sandboxes/b/archive?path=/work"),
            ("PUT", "/sandboxes/b/archive?path=/work"),
            ("GET", "/volumes"),
            ("DELETE", "/volumes/v"),
        ];
        let mut routed: Vec<(String, String)> = samples
            .iter()
            .map(|(method, url)| {
                let route = parse(method, url).unwrap_or_else(|e| panic!("{method} {url}: {e:?}"));
                let (method, template) = operation_of(&route);
                (method.to_string(), template.to_string())
            })
            .collect();
        routed.push(("head".into(), "/health".into()));
        routed.sort();
        routed.dedup();
        assert_eq!(routed.len(), samples.len() + 1, "two samples, one route");
        assert_eq!(routed, operations);
    }

    #[test]
    fn the_document_is_served_by_its_own_route() {
        assert_eq!(parse("GET", "/openapi.json"), Ok(Route::OpenApi));
        assert!(matches!(
            parse("POST", "/openapi.json"),
            Err(RouteError::MethodNotAllowed { allowed: "GET", .. })
        ));
    }

    /// The answer a refused route gets: status, envelope and headers.
    fn refusal(method: &str, url: &str) -> crate::server::response::Reply {
        let error = parse(method, url).expect_err("a refused route");
        crate::server::response::ApiError::from(error).reply()
    }

    // Moved from the integration tests (`api.rs`: unknown routes and wrong methods;
    // `sandboxes.rs`: a bad name; `files.rs`: methods on file paths): the router alone
    // decides these, before any body or engine.
    #[test]
    fn unknown_routes_wrong_methods_and_bad_names_are_json_404_405_and_400() {
        let reply = refusal("GET", "/nope");
        assert_eq!(reply.status, 404);
        let body = reply.into_envelope();
        assert_eq!(body["success"], serde_json::json!(false));
        assert_eq!(body["error"], serde_json::json!("No route for /nope"));
        for (method, url, allowed) in [
            ("GET", "/run", "POST"),
            ("PUT", "/sandboxes/x", "GET, DELETE"),
            ("PATCH", "/health", "GET"),
            ("PATCH", "/sandboxes/errs/files/tmp/x", "GET, PUT, DELETE"),
            ("GET", "/sandboxes/errs/files", "POST"),
        ] {
            let reply = refusal(method, url);
            assert_eq!(reply.status, 405, "{method} {url}");
            assert_eq!(
                reply.headers,
                vec![("Allow", allowed.to_string())],
                "{method} {url}"
            );
            assert_eq!(reply.into_envelope()["success"], serde_json::json!(false));
        }
        let reply = refusal("GET", "/sandboxes/bad%2Fname");
        assert_eq!(reply.status, 400);
        let body = reply.into_envelope();
        let message = body["error"].as_str().unwrap();
        assert!(message.contains("invalid sandbox name"), "{message}");
    }

    #[test]
    fn targets_are_routed_back_to_their_routes() {
        let name = name("box-1");
        let file = |text: &str| SandboxPath::parse(text).unwrap();
        let routes = [
            Route::OpenApi,
            Route::Health,
            Route::Backends,
            Route::Pool,
            Route::Run,
            Route::RunStream,
            Route::BatchRun,
            Route::ListSandboxes,
            Route::CreateSandbox,
            Route::GetSandbox(name.clone()),
            Route::GetSandboxByUuid("0123456789abcdef".into()),
            Route::ExtendSandbox(name.clone()),
            Route::DeleteSandbox(name.clone()),
            Route::ExecSandbox(name.clone()),
            Route::ExecSandboxStream(name.clone()),
            Route::ExecDetach(name.clone()),
            Route::DetachedList(name.clone()),
            Route::DetachedStatus(name.clone(), "0123456789abcdef".into()),
            Route::DetachedKill(name.clone(), "0123456789abcdef".into()),
            Route::DetachedLogs {
                sandbox: name.clone(),
                id: "0123456789abcdef".into(),
                stderr_only: false,
            },
            Route::DetachedLogs {
                sandbox: name.clone(),
                id: "0123456789abcdef".into(),
                stderr_only: true,
            },
            Route::StartSandbox(name.clone()),
            Route::StopSandbox(name.clone()),
            Route::PauseSandbox(name.clone()),
            Route::ResumeSandbox(name.clone()),
            Route::SandboxLogs(name.clone()),
            Route::SandboxStats(name.clone()),
            Route::GetSandboxFile(name.clone(), file("/tmp/x")),
            Route::PutSandboxFile(name.clone(), file("/tmp/a b/%41?#€")),
            Route::DeleteSandboxFile(name.clone(), file("/files/x")),
            Route::PostSandboxFiles(name.clone()),
            Route::ListSnapshots,
            Route::CreateSnapshot,
            Route::GetSnapshot(name.clone()),
            Route::DeleteSnapshot(name.clone()),
            Route::RestoreSnapshot(name.clone()),
            Route::Metrics,
            Route::GetArchive(name.clone(), file("/work/a b")),
            Route::PutArchive(name.clone(), file("/work")),
            Route::ListVolumes,
            Route::DeleteVolume(name.clone()),
        ];
        // And every documented operation (every variant: see `every_route_is_documented`).
        let documented = documented_operations()
            .into_iter()
            .map(|(method, template)| {
                parse(&method.to_uppercase(), &example_url(&template)).unwrap()
            });
        for route in routes.into_iter().chain(documented) {
            let (method, path) = route.target();
            assert_eq!(parse(method, &path), Ok(route), "{method} {path}");
        }
        assert_eq!(
            Route::PutSandboxFile(name, file("/tmp/a b")).target().1,
            "/sandboxes/box-1/files/tmp/a%20b"
        );
    }
}
