//! Configuration, built once from flags and the environment, validated, then passed
//! down by reference. There are no globals: everything a handler may consult is here.
//!
//! Also home of the image table: which image a `/run` without `image` gets, chosen from
//! the command's program name, overridable per runtime.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::containers::profile::{Network, Profile};
use crate::engine::reference::ImageRef;

#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub workers: usize,
    pub queue: usize,
    pub namespace: Namespace,
    pub api_key: Option<String>,
    /// The tenants' keys, namespaces and quotas (`tenants`); read at start and on
    /// SIGHUP.
    pub keys_file: Option<PathBuf>,
    pub docker_socket: PathBuf,
    /// Bound on every ordinary Engine call.
    pub docker_timeout: Duration,
    pub images: ImageTable,
    pub default_profile: Profile,
    pub max_body_bytes: u64,
    /// Largest file the files API reads or writes (413 above it).
    pub max_file_bytes: u64,
    /// Most request-body bytes held in memory at once, over all connections, counted as
    /// they arrive; a body that does not fit gets a 503. Never below twice one upload's
    /// limit.
    pub max_body_memory_bytes: u64,
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
    pub default_max_output_bytes: u64,
    pub max_output_bytes_limit: u64,
    /// Most output one request keeps for its answer: stdout and stderr of all its
    /// commands together (a batch's commands share it); each command's own
    /// `max_output_bytes` still caps each of its streams within it.
    pub max_request_output_bytes: u64,
    /// Most output held in memory at once over all requests (kept output, event
    /// streams' events in flight, file contents, detached logs); a request that finds
    /// no room for what it may need is answered 503 before it runs. Never below one
    /// request's budget or one largest read (`server::output_memory_limit`).
    pub max_output_memory_bytes: u64,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Warm pool keys kept from start-up; `None` means the default image and profile.
    pub pool: Option<Vec<(PoolKey, usize)>>,
    pub pool_default_size: usize,
    /// Least kept for pool keys added because requests used them.
    pub pool_dynamic_size: usize,
    /// Most kept warm for all keys together as they grow (their minimums are kept even
    /// if they add up to more).
    pub pool_max: usize,
    /// A sandbox's ttl and idle timeout when its request gives none (`expiry`).
    pub sandbox_ttl: Option<Duration>,
    pub sandbox_idle_timeout: Option<Duration>,
    /// The egress policy of every container whose request names none (`None`: its
    /// profile's, `Profile::default_network`).
    pub default_network: Option<Network>,
    /// The widest egress policy a request may have (`--max-network`; a tenant's
    /// `max_network` narrows it for its namespace): a default above it is brought down
    /// to it, a request above it is refused.
    pub max_network: Network,
    /// The largest disk quota a request may ask for, in MiB (`--max-disk-mb`); a
    /// profile's default above it is brought down to it.
    pub max_disk_mb: u64,
    /// The engine runtime of containers whose request names none (`--default-runtime`;
    /// `None`: the engine's default).
    pub default_runtime: Option<String>,
    /// The runtimes a request may name (`--runtimes`); `None`: the server's default and
    /// gVisor's (a stronger boundary is always allowed), never another.
    pub runtimes: Option<Vec<String>>,
    /// The resolvers allow-list containers' names are asked of (`--egress-resolver`;
    /// empty: the host's, from `/etc/resolv.conf`).
    pub egress_resolvers: Vec<std::net::SocketAddr>,
    /// Enforce disk quotas (`--no-disk-quota` turns them off): where they cannot hold,
    /// containers are refused.
    pub disk_quota: bool,
    /// Use the in-container stub where possible (else always `docker exec`).
    pub stub: bool,
    /// Cluster mode (`serve --cluster`): route every request to these agents, with no
    /// engine of our own.
    pub cluster: Option<ClusterSource>,
    /// Bound on each write to a client, and on reading a whole request body.
    pub client_timeout: Duration,
    /// Most open client connections; past it new ones get a 503 and are closed at once.
    /// Lowered at start-up to what the open-files limit leaves room for.
    pub max_connections: usize,
    /// How long a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// From a request's first byte to the end of its head.
    pub head_timeout: Duration,
    /// Honour the `X-Agentkernel-Test-Panic` header (tests of panic containment only;
    /// set by `AGENTKERNEL_TEST_HOOKS=1`, never by default).
    pub test_hooks: bool,
    /// Where sandbox history is kept; `None` keeps none.
    pub data_dir: Option<PathBuf>,
    pub history_max_bytes: u64,
    /// Most commands in one `/batch/run`, and how many of them run at once.
    pub max_batch: usize,
    pub batch_concurrency: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            host: "127.0.0.1".into(),
            port: 8080,
            workers: 8,
            queue: 64,
            namespace: Namespace::parse("default").expect("valid default namespace"),
            api_key: None,
            keys_file: None,
            docker_socket: PathBuf::from("/var/run/docker.sock"),
            docker_timeout: Duration::from_secs(60),
            images: ImageTable::default(),
            default_profile: Profile::Moderate,
            max_body_bytes: 1024 * 1024,
            max_file_bytes: 16 * 1024 * 1024,
            max_body_memory_bytes: 256 * 1024 * 1024,
            default_timeout_ms: 30_000,
            max_timeout_ms: 3_600_000,
            default_max_output_bytes: 1024 * 1024,
            max_output_bytes_limit: 16 * 1024 * 1024,
            max_request_output_bytes: 16 * 1024 * 1024,
            max_output_memory_bytes: 48 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(5),
            pool: None,
            pool_default_size: 4,
            pool_dynamic_size: 2,
            pool_max: 16,
            sandbox_ttl: None,
            default_network: None,
            max_network: Network::Full,
            max_disk_mb: 16 * 1024,
            disk_quota: true,
            default_runtime: None,
            runtimes: None,
            egress_resolvers: Vec::new(),
            sandbox_idle_timeout: None,
            stub: true,
            cluster: None,
            client_timeout: Duration::from_secs(30),
            max_connections: 1024,
            idle_timeout: Duration::from_secs(15),
            head_timeout: Duration::from_secs(10),
            test_hooks: false,
            data_dir: None,
            history_max_bytes: 8 * 1024 * 1024,
            max_batch: 64,
            batch_concurrency: 4,
        }
    }
}

/// A set of environment lookups, so that tests can pass their own.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|value| !value.is_empty())
    }
}

impl Config {
    /// The body limit of file uploads: a file of `max_file_bytes` in base64 (4/3 of its
    /// size) plus room for the JSON around it, and never below the ordinary limit.
    pub fn max_upload_body_bytes(&self) -> u64 {
        (self.max_file_bytes.saturating_mul(4) / 3)
            .saturating_add(64 * 1024)
            .max(self.max_body_bytes)
    }

    /// The body memory budget in force: the configured one, but room for at least one
    /// upload of the largest size we accept (twice over: a chunked body's buffer grows
    /// by doubling).
    pub fn body_memory_budget(&self) -> u64 {
        self.max_body_memory_bytes
            .max(self.max_upload_body_bytes().saturating_mul(2))
    }

    /// The egress policy of a container of `profile` whose request names none: the
    /// server's default, else the profile's, never wider than `max_network`.
    /// The disk quota of a container whose request names none: its profile's, never
    /// above `max_disk_mb`.
    pub fn disk_for(&self, profile: Profile) -> u64 {
        profile.default_limits().disk_mb.min(self.max_disk_mb)
    }

    pub fn network_for(&self, profile: Profile) -> Network {
        match self
            .default_network
            .unwrap_or_else(|| profile.default_network())
            .min(self.max_network)
        {
            // An allow-list is a request's own: a default brought down to the ceiling
            // `allow` lists nothing.
            Network::Allow => Network::None,
            network => network,
        }
    }

    /// The pool keys to keep warm from start-up.
    pub fn pool_keys(&self) -> Vec<(PoolKey, usize)> {
        let mut keys = self.pool.clone().unwrap_or_else(|| {
            vec![(
                PoolKey {
                    image: self.images.default_image.clone(),
                    profile: self.default_profile,
                    network: self.default_profile.default_network(),
                    runtime: None,
                },
                self.pool_default_size,
            )]
        });
        let gvisor = crate::engine::is_gvisor_name(self.default_runtime.as_deref());
        for (key, _) in &mut keys {
            // Under gVisor the network is none (what its requests get).
            key.network = if gvisor {
                Network::None
            } else {
                self.network_for(key.profile)
            };
        }
        keys
    }

    /// Defaults overlaid with the environment; flags are applied on top by the CLI.
    pub fn from_env(env: &dyn Environment) -> Result<Config, String> {
        let mut config = Config {
            api_key: env.var("AGENTKERNEL_API_KEY"),
            keys_file: env.var("AGENTKERNEL_KEYS_FILE").map(PathBuf::from),
            docker_socket: crate::engine::Docker::socket_from_env(
                env.var("DOCKER_HOST").as_deref(),
            )?,
            ..Config::default()
        };
        if let Some(namespace) = env.var("AGENTKERNEL_NAMESPACE") {
            config.namespace = Namespace::parse(&namespace)?;
        }
        config.data_dir = env
            .var("AGENTKERNEL_DATA_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                env.var("XDG_STATE_HOME")
                    .map(|dir| PathBuf::from(dir).join("agentkernel"))
            })
            .or_else(|| {
                env.var("HOME")
                    .map(|home| PathBuf::from(home).join(".local/state/agentkernel"))
            });
        config.test_hooks = env.var("AGENTKERNEL_TEST_HOOKS").as_deref() == Some("1");
        if env.var("AGENTKERNEL_STUB").as_deref() == Some("off") {
            config.stub = false;
        }
        for (variable, field) in [
            ("AGENTKERNEL_SANDBOX_TTL", &mut config.sandbox_ttl),
            (
                "AGENTKERNEL_SANDBOX_IDLE_TIMEOUT",
                &mut config.sandbox_idle_timeout,
            ),
        ] {
            if let Some(text) = env.var(variable) {
                *field =
                    Some(parse_duration(&text).map_err(|error| format!("{variable}: {error}"))?);
            }
        }
        if let Some(network) = env.var("AGENTKERNEL_DEFAULT_NETWORK") {
            config.default_network = Some(
                Network::parse(&network)
                    .and_then(crate::containers::profile::default_policy)
                    .map_err(|error| format!("AGENTKERNEL_DEFAULT_NETWORK: {error}"))?,
            );
        }
        if let Some(network) = env.var("AGENTKERNEL_MAX_NETWORK") {
            config.max_network = Network::parse(&network)
                .map_err(|error| format!("AGENTKERNEL_MAX_NETWORK: {error}"))?;
        }
        if let Some(mb) = env.var("AGENTKERNEL_MAX_DISK_MB") {
            config.max_disk_mb = mb
                .parse()
                .ok()
                .filter(|mb| *mb >= crate::containers::profile::DISK_MB_RANGE.0)
                .ok_or_else(|| format!("AGENTKERNEL_MAX_DISK_MB: expected a number of MiB of at least 16, got '{mb}'"))?;
        }
        if let Some(runtime) = env.var("AGENTKERNEL_DEFAULT_RUNTIME") {
            if !crate::engine::valid_runtime_name(&runtime) {
                return Err(format!(
                    "AGENTKERNEL_DEFAULT_RUNTIME: invalid runtime name '{runtime}'"
                ));
            }
            config.default_runtime = Some(runtime);
        }
        if let Some(resolver) = env.var("AGENTKERNEL_EGRESS_RESOLVER") {
            config.egress_resolvers = vec![parse_resolver(&resolver)
                .map_err(|error| format!("AGENTKERNEL_EGRESS_RESOLVER: {error}"))?];
        }
        if let Some(list) = env.var("AGENTKERNEL_RUNTIMES") {
            config.runtimes = Some(parse_runtimes(&list)?);
        }
        if env.var("AGENTKERNEL_DISK_QUOTA").as_deref() == Some("off") {
            config.disk_quota = false;
        }
        if let Some(image) = env.var("AGENTKERNEL_DEFAULT_IMAGE") {
            config.images.set_default(&image)?;
        }
        for runtime in RUNTIMES {
            let variable = format!("AGENTKERNEL_IMAGE_{}", runtime.name.to_ascii_uppercase());
            if let Some(image) = env.var(&variable) {
                config.images.set(runtime.name, &image)?;
            }
        }
        Ok(config)
    }
}

/// A `--runtimes` list: names, comma-separated.
pub fn parse_runtimes(text: &str) -> Result<Vec<String>, String> {
    let names: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect();
    match names
        .iter()
        .find(|name| !crate::engine::valid_runtime_name(name))
    {
        Some(bad) => Err(format!("invalid runtime name '{bad}'")),
        None if names.is_empty() => Err("no runtime named".into()),
        None => Ok(names),
    }
}

/// A resolver's `ADDRESS[:PORT]` (IPv4; port 53 when not given).
pub fn parse_resolver(text: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(address) = text.parse::<std::net::Ipv4Addr>() {
        return Ok(std::net::SocketAddr::from((address, 53)));
    }
    match text.parse::<std::net::SocketAddrV4>() {
        Ok(address) => Ok(std::net::SocketAddr::V4(address)),
        Err(_) => Err(format!("expected an IPv4 ADDRESS[:PORT], got '{text}'")),
    }
}

/// The longest ttl, idle timeout or extension: a year (a bound, so that no time
/// computed from one overflows).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a duration as the API takes it: whole seconds, or digits and a unit (`90s`,
/// `30m`, `2h`, `1d`); at least a second, at most `MAX_DURATION`.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let (digits, unit) = match text.as_bytes().last() {
        Some(b's') => (&text[..text.len() - 1], 1),
        Some(b'm') => (&text[..text.len() - 1], 60),
        Some(b'h') => (&text[..text.len() - 1], 3600),
        Some(b'd') => (&text[..text.len() - 1], 86400),
        _ => (text, 1),
    };
    let count: u64 = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits
            .parse()
            .map_err(|_| format!("'{text}' is too long"))?
    } else {
        return Err(format!(
            "'{text}' is not a duration: give seconds, or digits and s, m, h or d (90s, 30m, 2h, 1d)"
        ));
    };
    let seconds = count.saturating_mul(unit);
    if seconds == 0 || seconds > MAX_DURATION.as_secs() {
        return Err(format!("'{text}' must be from 1 s to 365 days"));
    }
    Ok(Duration::from_secs(seconds))
}

/// The namespace that scopes everything a server sees, lists and sweeps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(String);

impl Namespace {
    /// 1–32 characters of `[a-z0-9-]`: no `_` or `.`, so that the container name
    /// `ak_<namespace>_<sandbox>` can never be produced by two different pairs.
    pub fn parse(text: &str) -> Result<Namespace, String> {
        let valid = !text.is_empty()
            && text.len() <= 32
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if valid {
            Ok(Namespace(text.to_string()))
        } else {
            Err(format!(
                "invalid namespace '{text}': use 1-32 characters of a-z, 0-9 and '-'"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One runtime of the image table: the program names that select it.
pub struct Runtime {
    pub name: &'static str,
    pub programs: &'static [&'static str],
    pub default_image: &'static str,
}

pub const RUNTIMES: &[Runtime] = &[
    Runtime {
        name: "python",
        programs: &["python", "python3", "pip", "pip3"],
        default_image: "python:3.12-alpine",
    },
    Runtime {
        name: "node",
        programs: &["node", "npm", "npx", "yarn", "pnpm"],
        default_image: "node:22-alpine",
    },
    Runtime {
        name: "bun",
        programs: &["bun", "bunx"],
        default_image: "oven/bun:1-alpine",
    },
    Runtime {
        name: "deno",
        programs: &["deno"],
        default_image: "denoland/deno:alpine",
    },
    Runtime {
        name: "ruby",
        programs: &["ruby", "gem", "bundle", "irb"],
        default_image: "ruby:3.3-alpine",
    },
    Runtime {
        name: "go",
        programs: &["go", "gofmt"],
        default_image: "golang:1.23-alpine",
    },
    Runtime {
        name: "rust",
        programs: &["cargo", "rustc"],
        default_image: "rust:1-alpine",
    },
    Runtime {
        name: "java",
        programs: &["java", "javac", "jshell"],
        default_image: "eclipse-temurin:21-alpine",
    },
    Runtime {
        name: "php",
        programs: &["php", "composer"],
        default_image: "php:8.3-cli-alpine",
    },
];

/// Which image a command gets when the request names none.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTable {
    pub default_image: String,
    overrides: BTreeMap<&'static str, String>,
}

impl Default for ImageTable {
    fn default() -> ImageTable {
        ImageTable {
            default_image: "alpine:3.20".into(),
            overrides: BTreeMap::new(),
        }
    }
}

impl ImageTable {
    /// Overrides the image of one runtime (`python`, `node`, ...).
    pub fn set(&mut self, runtime: &str, image: &str) -> Result<(), String> {
        let known = RUNTIMES.iter().find(|r| r.name == runtime).ok_or_else(|| {
            let names: Vec<&str> = RUNTIMES.iter().map(|r| r.name).collect();
            format!(
                "unknown runtime '{runtime}': expected one of {}",
                names.join(", ")
            )
        })?;
        if image.is_empty() {
            return Err(format!("empty image for runtime '{runtime}'"));
        }
        crate::engine::reference::ImageRef::parse(image)?;
        self.overrides.insert(known.name, image.to_string());
        Ok(())
    }

    /// Sets the image of commands of no known runtime; it must be a valid reference.
    pub fn set_default(&mut self, image: &str) -> Result<(), String> {
        crate::engine::reference::ImageRef::parse(image)?;
        self.default_image = image.to_string();
        Ok(())
    }

    /// The image for a command: by the base name of its program, else the default.
    pub fn image_for(&self, program: &str) -> &str {
        let base = program.rsplit('/').next().unwrap_or(program);
        // `python3.12`, `node18` and the like select their runtime too.
        let stem = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        for runtime in RUNTIMES {
            if runtime.programs.contains(&base) || runtime.programs.contains(&stem) {
                return self
                    .overrides
                    .get(runtime.name)
                    .map(String::as_str)
                    .unwrap_or(runtime.default_image);
            }
        }
        &self.default_image
    }
}

/// What a pool holds containers for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PoolKey {
    pub image: String,
    pub profile: Profile,
    pub network: Network,
    /// The engine runtime (`containers::runtime`): `None` for the server's default.
    pub runtime: Option<String>,
}

impl PoolKey {
    /// `image[:profile]`, where the profile is recognised by name after the last `:`.
    /// The image must be a valid reference (`ImageRef`).
    pub fn parse(text: &str, default_profile: Profile) -> std::result::Result<PoolKey, String> {
        if let Some((image, profile)) = text.rsplit_once(':') {
            if let Ok(profile) = Profile::parse(profile) {
                if !image.is_empty() {
                    return Ok(PoolKey {
                        image: ImageRef::parse(image)?.to_string(),
                        profile,
                        network: profile.default_network(),
                        runtime: None,
                    });
                }
            }
        }
        if text.is_empty() {
            return Err("empty pool image".into());
        }
        Ok(PoolKey {
            image: ImageRef::parse(text)?.to_string(),
            profile: default_profile,
            network: default_profile.default_network(),
            runtime: None,
        })
    }
}

/// Where a cluster router (`serve --cluster`) finds its agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterSource {
    /// `--nodes HOST:PORT,...`: a fixed list.
    Nodes(Vec<String>),
    /// `--discover NAME:PORT`: every address the name resolves to (Swarm's
    /// `tasks.SERVICE`, a Kubernetes headless Service), resolved again and again.
    Discover { name: String, port: u16 },
}

impl ClusterSource {
    /// Parses `--nodes` (`HOST:PORT` or `http://HOST:PORT`, comma-separated).
    pub fn nodes(list: &str) -> Result<ClusterSource, String> {
        let nodes: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|node| !node.is_empty())
            .map(address_of)
            .collect::<Result<_, _>>()?;
        if nodes.is_empty() {
            return Err("--nodes: no node given".into());
        }
        Ok(ClusterSource::Nodes(nodes))
    }

    /// Parses `--discover NAME:PORT`.
    pub fn discover(value: &str) -> Result<ClusterSource, String> {
        let (name, port) = value
            .rsplit_once(':')
            .ok_or_else(|| format!("--discover '{value}': expected NAME:PORT"))?;
        let port = port
            .parse()
            .map_err(|_| format!("--discover '{value}': bad port"))?;
        if name.is_empty() {
            return Err(format!("--discover '{value}': no name"));
        }
        Ok(ClusterSource::Discover {
            name: name.to_string(),
            port,
        })
    }
}

/// `HOST:PORT` out of `HOST:PORT` or `http://HOST:PORT[/]`.
fn address_of(node: &str) -> Result<String, String> {
    let bare = node.strip_prefix("http://").unwrap_or(node);
    let bare = bare.strip_suffix('/').unwrap_or(bare);
    if node.starts_with("https://") {
        return Err(format!(
            "node '{node}': agents are reached over plain HTTP on a private network"
        ));
    }
    match bare.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(bare.to_string())
        }
        _ => Err(format!("node '{node}': expected HOST:PORT")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_and_discover_parse_or_say_why_not() {
        assert_eq!(
            ClusterSource::nodes("a:1, http://b:2/").unwrap(),
            ClusterSource::Nodes(vec!["a:1".into(), "b:2".into()])
        );
        assert!(ClusterSource::nodes("a").unwrap_err().contains("HOST:PORT"));
        assert!(ClusterSource::nodes("https://a:1")
            .unwrap_err()
            .contains("plain HTTP"));
        assert!(ClusterSource::nodes(" , ").unwrap_err().contains("no node"));
        assert_eq!(
            ClusterSource::discover("tasks.agent:8080").unwrap(),
            ClusterSource::Discover {
                name: "tasks.agent".into(),
                port: 8080
            }
        );
        assert!(ClusterSource::discover("tasks.agent").is_err());
        assert!(ClusterSource::discover(":80").is_err());
    }

    #[test]
    fn durations_take_seconds_or_a_unit() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        for bad in [
            "",
            "s",
            "0",
            "0s",
            "-5s",
            "1.5h",
            "2 h",
            "1w",
            "h2",
            "366d",
            "99999999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("365d").is_ok());
    }

    struct FakeEnvironment(Vec<(&'static str, &'static str)>);

    impl Environment for FakeEnvironment {
        fn var(&self, name: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        }
    }

    #[test]
    fn detects_images_from_the_program_name() {
        let table = ImageTable::default();
        assert_eq!(table.image_for("python3"), "python:3.12-alpine");
        assert_eq!(table.image_for("/usr/bin/python3.12"), "python:3.12-alpine");
        assert_eq!(table.image_for("pip"), "python:3.12-alpine");
        assert_eq!(table.image_for("npx"), "node:22-alpine");
        assert_eq!(table.image_for("go"), "golang:1.23-alpine");
        assert_eq!(table.image_for("echo"), "alpine:3.20");
        assert_eq!(table.image_for("sh"), "alpine:3.20");
    }

    #[test]
    fn environment_overrides_the_table() {
        let env = FakeEnvironment(vec![
            ("AGENTKERNEL_IMAGE_PYTHON", "local/python:3"),
            ("AGENTKERNEL_DEFAULT_IMAGE", "local/busybox"),
            ("AGENTKERNEL_API_KEY", "k"),
            ("DOCKER_HOST", "unix:///run/d.sock"),
        ]);
        let config = Config::from_env(&env).unwrap();
        assert_eq!(config.images.image_for("python"), "local/python:3");
        assert_eq!(config.images.image_for("ls"), "local/busybox");
        assert_eq!(config.images.image_for("node"), "node:22-alpine");
        assert_eq!(config.api_key.as_deref(), Some("k"));
        assert_eq!(config.docker_socket, PathBuf::from("/run/d.sock"));
        assert!(ImageTable::default().set("cobol", "x").is_err());
        assert!(ImageTable::default().set("python", "../../etc").is_err());
        assert!(ImageTable::default().set_default("/").is_err());
    }

    #[test]
    fn namespaces_cannot_collide_in_container_names() {
        assert!(Namespace::parse("ci-42").is_ok());
        for bad in ["", "a_b", "a.b", "UPPER", &"x".repeat(33)] {
            assert!(Namespace::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_network_is_never_wider_than_the_widest_allowed() {
        let mut config = Config::default();
        assert_eq!(config.network_for(Profile::Permissive), Network::Full);
        config.max_network = Network::Public;
        assert_eq!(config.network_for(Profile::Permissive), Network::Public);
        assert_eq!(config.network_for(Profile::Restrictive), Network::None);
        config.default_network = Some(Network::Full);
        assert_eq!(config.network_for(Profile::Moderate), Network::Public);
    }

    #[test]
    fn parses_pool_keys() {
        let key = PoolKey::parse("agentkernel/busybox:latest", Profile::Moderate).unwrap();
        assert_eq!(key.image, "agentkernel/busybox:latest");
        assert_eq!(key.profile, Profile::Moderate);
        let key = PoolKey::parse("alpine:3.20:restrictive", Profile::Moderate).unwrap();
        assert_eq!(key.image, "alpine:3.20");
        assert_eq!(key.profile, Profile::Restrictive);
        let key = PoolKey::parse("busybox:permissive", Profile::Moderate).unwrap();
        assert_eq!(
            (key.image.as_str(), key.profile),
            ("busybox", Profile::Permissive)
        );
        assert!(PoolKey::parse("", Profile::Moderate).is_err());
        assert!(PoolKey::parse("../../etc", Profile::Moderate).is_err());
        assert!(PoolKey::parse("/:restrictive", Profile::Moderate).is_err());
    }
}
