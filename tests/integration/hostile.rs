//! Hostile clients against the real binary: huge declared lengths, over-long heads,
//! slow and stalled clients, connection floods, descriptor exhaustion, panics, and the
//! framings a careless or malicious client sends. Each bound the README and
//! ARCHITECTURE.md claim for the HTTP edge has a test here.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{Options, Server};

fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// One answer read off a connection: status, headers (lowercased names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads one answer with a Content-Length body; `None` if the connection closed first.
fn read_answer(reader: &mut BufReader<TcpStream>) -> Option<Answer> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status = line.split(' ').nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Answer {
        status,
        headers,
        body,
    })
}

/// Writes `bytes` on a fresh connection and reads one answer.
fn exchange(server: &Server, bytes: &[u8]) -> Answer {
    let mut stream = connect(server);
    stream.write_all(bytes).unwrap();
    read_answer(&mut BufReader::new(stream)).expect("an answer")
}

/// Whether the peer closed the connection (EOF or reset) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0) | Err(_))
        && !matches!(
            stream.read(&mut byte),
            Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
}

fn health_ok(server: &Server) -> bool {
    let answer = exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    answer.status == 200
}

#[test]
fn a_huge_declared_length_is_413_on_every_route_and_the_server_lives() {
    for key in [None, Some("sekret")] {
        let mut options = Options::default();
        if let Some(key) = key {
            options.env.push(("AGENTKERNEL_API_KEY".into(), key.into()));
        }
        let server = Server::start_with(options);
        let routes = [
            "POST /run",
            "POST /run/stream",
            "POST /batch/run",
            "POST /sandboxes",
            "POST /sandboxes/b/exec",
            "PUT /sandboxes/b/files/tmp/x",
            "POST /sandboxes/b/files",
            "GET /health",
            "DELETE /sandboxes/b",
            "POST /nowhere",
        ];
        for route in routes {
            for expect in ["", "Expect: 100-continue\r\n"] {
                let request = format!(
                    "{route} HTTP/1.1\r\nHost: x\r\n{expect}Content-Length: 4611686018427387904\r\n\r\n{{}}"
                );
                let mut stream = connect(&server);
                stream.write_all(request.as_bytes()).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let answer = read_answer(&mut reader).expect("an answer");
                assert_eq!(answer.status, 413, "{route} {expect}");
                assert_eq!(answer.header("connection"), Some("close"), "{route}");
                assert!(answer.json()["error"]
                    .as_str()
                    .unwrap()
                    .contains("byte limit"));
                // Closed, not waiting for a body that will never be read.
                assert!(
                    closed_within(&mut stream, Duration::from_secs(3)),
                    "{route}"
                );
            }
        }
        let mut request = "GET /health HTTP/1.1\r\nHost: x\r\n".to_string();
        if let Some(key) = key {
            request.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        request.push_str("\r\n");
        assert_eq!(exchange(&server, request.as_bytes()).status, 200);
        server.finish();
    }
}

#[test]
fn expect_continue_gets_its_go_ahead_only_when_the_body_will_be_read() {
    let server = Server::start();
    let body = r#"{"command":["echo","hi"]}"#;
    let mut stream = connect(&server);
    let head = format!(
        "POST /run HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let go_ahead = read_answer(&mut reader).expect("100 Continue");
    assert_eq!(go_ahead.status, 100);
    stream.write_all(body.as_bytes()).unwrap();
    let answer = read_answer(&mut reader).expect("an answer");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["data"]["stdout"], "hi\n");

    // Refused before the body: no go-ahead, the final answer straight away.
    let answer = exchange(
        &server,
        b"POST /nowhere HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n",
    );
    assert_eq!(answer.status, 404);
    server.finish();
}

#[test]
fn heads_are_bounded() {
    let server = Server::start();
    let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000));
    assert_eq!(exchange(&server, long_line.as_bytes()).status, 414);
    let long_header = format!(
        "GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "b".repeat(9000)
    );
    assert_eq!(exchange(&server, long_header.as_bytes()).status, 431);
    let mut many = "GET /health HTTP/1.1\r\n".to_string();
    for index in 0..101 {
        many.push_str(&format!("X-{index}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(exchange(&server, many.as_bytes()).status, 431);
    let mut big = "GET /health HTTP/1.1\r\n".to_string();
    for index in 0..9 {
        big.push_str(&format!("X-{index}: {}\r\n", "c".repeat(8000)));
    }
    big.push_str("\r\n");
    assert_eq!(exchange(&server, big.as_bytes()).status, 431);
    // A line that never ends is refused as soon as it passes the bound.
    let mut stream = connect(&server);
    stream
        .write_all(b"GET /health HTTP/1.1\r\nX-Endless: ")
        .unwrap();
    let mut refused = None;
    for _ in 0..100 {
        if stream.write_all(&[b'z'; 1024]).is_err() {
            break;
        }
        stream
            .set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        let mut buffer = [0u8; 64];
        if let Ok(count) = stream.read(&mut buffer) {
            refused = Some(String::from_utf8_lossy(&buffer[..count]).into_owned());
            break;
        }
    }
    assert!(
        refused
            .as_deref()
            .unwrap_or_default()
            .starts_with("HTTP/1.1 431"),
        "{refused:?}"
    );
    assert!(health_ok(&server));
    server.finish();
}

#[test]
fn slow_heads_idle_connections_and_stalled_bodies_time_out() {
    let server = Server::start_with(Options {
        args: [
            "--head-timeout-secs",
            "1",
            "--idle-timeout-secs",
            "1",
            "--client-timeout-secs",
            "1",
            "--workers",
            "1",
        ]
        .map(String::from)
        .to_vec(),
        ..Options::default()
    });
    // A head that never ends: 408, then closed.
    let mut stream = connect(&server);
    stream.write_all(b"GET /hea").unwrap();
    let started = Instant::now();
    let answer = read_answer(&mut BufReader::new(stream.try_clone().unwrap())).unwrap();
    assert_eq!(answer.status, 408);
    assert!(started.elapsed() < Duration::from_secs(3));

    // An idle kept-alive connection is closed.
    let mut stream = connect(&server);
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    assert_eq!(read_answer(&mut reader).unwrap().status, 200);
    let started = Instant::now();
    assert!(closed_within(&mut stream, Duration::from_secs(5)));
    assert!(started.elapsed() < Duration::from_secs(3));

    // A body promised and not sent: 408, and the only worker was never held.
    let mut stalled = connect(&server);
    stalled
        .write_all(b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{\"comm")
        .unwrap();
    let started = Instant::now();
    assert!(health_ok(&server));
    assert!(started.elapsed() < Duration::from_millis(500));
    let answer = read_answer(&mut BufReader::new(stalled)).unwrap();
    assert_eq!(answer.status, 408);
    server.finish();
}

#[test]
fn slow_clients_cannot_starve_the_server() {
    // Times runs against the engine's pace.
    let _serial = crate::harness::exclusive();
    let server = Server::start_with(Options {
        args: ["--pool-size", "2"].map(String::from).to_vec(),
        ..Options::default()
    });
    let mut slow: Vec<TcpStream> = (0..256).map(|_| connect(&server)).collect();
    let request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: 1234567890\r\n";
    for round in 0..4 {
        for stream in &mut slow {
            stream.write_all(&request[round..round + 1]).unwrap();
        }
        // The median of three, so that one scheduling hiccup of this shared 2-core
        // machine is not taken for starvation.
        let round_started = Instant::now();
        let mut times: Vec<Duration> = (0..3)
            .map(|_| {
                let started = Instant::now();
                assert!(health_ok(&server));
                started.elapsed()
            })
            .collect();
        times.sort();
        assert!(
            times[1] < Duration::from_millis(100),
            "health took {times:?}"
        );
        std::thread::sleep(Duration::from_millis(1000).saturating_sub(round_started.elapsed()));
    }
    let (status, body) = server.post("/run", r#"{"command":["echo","still here"]}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["stdout"], "still here\n");
    drop(slow);
    server.finish();
}

#[test]
fn connections_past_the_limit_are_refused_at_once() {
    let server = Server::start_with(Options {
        args: ["--max-connections", "4"].map(String::from).to_vec(),
        ..Options::default()
    });
    let held: Vec<TcpStream> = (0..4).map(|_| connect(&server)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let answer = exchange(&server, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(answer.status, 503);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(answer.json()["error"]
        .as_str()
        .unwrap()
        .contains("too many open connections"));
    // A flood past the limit is refused as fast as it comes: half a second after 400
    // connections, a new client gets its 503 in well under a second.
    let flood: Vec<TcpStream> = (0..400).map(|_| connect(&server)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let mut stream = connect(&server);
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let answer = read_answer(&mut BufReader::new(stream)).expect("an answer");
    assert_eq!(answer.status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused after {:?}",
        started.elapsed()
    );
    drop(flood);
    drop(held);
    let back = crate::harness::eventually(Duration::from_secs(5), || health_ok(&server));
    assert!(
        back,
        "the server did not serve again once connections closed"
    );
    server.finish();
}

#[test]
fn the_accept_loop_survives_running_out_of_file_descriptors() {
    // A wrapper that lowers the open-files limit to 256 before starting the server.
    let wrapper = crate::harness::wrapped_binary("ulimit", "ulimit -n 256;");
    let server = Server::start_with(Options {
        binary: Some(wrapper.clone()),
        // Above what 256 descriptors allow: the edge lowers it, the rest hits EMFILE.
        args: ["--max-connections", "100000"].map(String::from).to_vec(),
        ..Options::default()
    });
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..400 {
        match TcpStream::connect_timeout(
            &format!("127.0.0.1:{}", server.port).parse().unwrap(),
            Duration::from_secs(2),
        ) {
            Ok(stream) => held.push(stream),
            Err(_) => refused += 1,
        }
    }
    // Everything past what the server could take was answered 503 or closed.
    std::thread::sleep(Duration::from_millis(500));
    let mut closed = 0;
    for stream in &mut held {
        stream.set_nonblocking(true).unwrap();
        let mut buffer = [0u8; 512];
        match stream.read(&mut buffer) {
            Ok(0) => closed += 1,
            Ok(count) if String::from_utf8_lossy(&buffer[..count]).contains(" 503 ") => closed += 1,
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => closed += 1,
            _ => {}
        }
    }
    assert!(closed + refused > 0, "all 400 connections were kept open");
    assert!(server
        .wait_for_log("refusing", Duration::from_secs(5))
        .is_some());
    drop(held);
    let back = crate::harness::eventually(Duration::from_secs(10), || health_ok(&server));
    assert!(
        back,
        "the server did not serve again once connections closed"
    );
    let (status, body) = server.post("/run", r#"{"command":["echo","ok"]}"#);
    assert_eq!(status, 200, "{body}");
    server.finish();
    let _ = std::fs::remove_file(wrapper);
}

#[test]
fn panics_never_shrink_the_worker_pool() {
    let server = Server::start_with(Options {
        args: ["--workers", "2"].map(String::from).to_vec(),
        env: vec![("AGENTKERNEL_TEST_HOOKS".into(), "1".into())],
        ..Options::default()
    });
    for _ in 0..4 {
        let answer = exchange(
            &server,
            b"GET /pool HTTP/1.1\r\nHost: x\r\nX-Agentkernel-Test-Panic: handler\r\n\r\n",
        );
        assert_eq!(answer.status, 500);
        assert_eq!(answer.json()["success"], false);
        for place in ["write", "stream"] {
            let (route, body) = if place == "stream" {
                ("POST /run/stream", r#"{"command":["true"]}"#)
            } else {
                ("GET /health", "")
            };
            let request = format!(
                "{route} HTTP/1.1\r\nHost: x\r\nX-Agentkernel-Test-Panic: {place}\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let mut stream = connect(&server);
            stream.write_all(request.as_bytes()).unwrap();
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
        }
    }
    let (status, body) = server.get("/health");
    assert_eq!(status, 200);
    assert_eq!(body["workers"]["configured"], 2);
    assert_eq!(body["workers"]["alive"], 2, "{body}");
    // Both workers still serve: two runs at once.
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let url = server.url("/run");
            std::thread::spawn(move || {
                crate::harness::request_url("POST", &url, Some(r#"{"command":["echo","x"]}"#), &[])
                    .0
            })
        })
        .collect();
    for run in runs {
        assert_eq!(run.join().unwrap(), 200);
    }
    server.finish();
}

#[test]
fn framings_work_or_get_a_clean_4xx() {
    let server = Server::start();
    // Chunked request body.
    let body = r#"{"command":["echo","chunked"]}"#;
    let (first, second) = body.split_at(10);
    let request = format!(
        "POST /run HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{first}\r\n{:x};ext=1\r\n{second}\r\n0\r\n\r\n",
        first.len(),
        second.len()
    );
    let answer = exchange(&server, request.as_bytes());
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["data"]["stdout"], "chunked\n");
    // Malformed chunked framing, and smuggling shapes.
    for bad in [
        "POST /run HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "POST /run HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
        "POST /run HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    ] {
        let answer = exchange(&server, bad.as_bytes());
        assert_eq!(answer.status, 400, "{bad:?}");
    }
    assert_eq!(
        exchange(
            &server,
            b"POST /run HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"
        )
        .status,
        501
    );
    // Invalid UTF-8 in a header, the path and the body.
    for bad in [
        &b"GET /health HTTP/1.1\r\nX-Bad: \xff\xfe\r\n\r\n"[..],
        &b"GET /sandboxes/\xff HTTP/1.1\r\n\r\n"[..],
        &b"GET /sandboxes/%ff HTTP/1.1\r\n\r\n"[..],
        &b"POST /run HTTP/1.1\r\nContent-Length: 4\r\n\r\n\"\xff\xfe\""[..],
    ] {
        let answer = exchange(&server, bad);
        assert_eq!(
            answer.status,
            400,
            "{:?}: {:?}",
            String::from_utf8_lossy(bad),
            String::from_utf8_lossy(&answer.body)
        );
    }
    // A 405 names the allowed methods in its `Allow` header (which methods: unit tests
    // of `server::routes`).
    let answer = exchange(
        &server,
        b"PATCH /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(answer.status, 405);
    assert_eq!(answer.header("allow"), Some("GET"));
    // Not HTTP at all (a TLS hello).
    let answer = exchange(
        &server,
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
    );
    assert_eq!(answer.status, 400);

    // HTTP/1.0: answered, then closed.
    let mut stream = connect(&server);
    stream.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
    let mut all = Vec::new();
    stream.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("}\n"), "{text}");

    // HEAD: the head only.
    let mut stream = connect(&server);
    stream
        .write_all(b"HEAD /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    stream.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("\r\n\r\n"),
        "{text}"
    );
    server.finish();
}

#[test]
fn pipelined_and_a_thousand_kept_alive_requests_are_all_answered() {
    let server = Server::start();
    let mut stream = connect(&server);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    // Three requests in one write, one with a body.
    let body = r#"{"command":["echo","piped"]}"#;
    let pipelined = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\n\r\n\
         POST /run HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}\
         GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n",
        body.len()
    );
    stream.write_all(pipelined.as_bytes()).unwrap();
    assert_eq!(read_answer(&mut reader).unwrap().status, 200);
    let run = read_answer(&mut reader).unwrap();
    assert_eq!(run.status, 200);
    assert_eq!(run.json()["data"]["stdout"], "piped\n");
    assert_eq!(read_answer(&mut reader).unwrap().status, 404);
    // A thousand more on the same connection.
    for index in 0..1000 {
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let answer = read_answer(&mut reader).unwrap_or_else(|| panic!("request {index}"));
        assert_eq!(answer.status, 200, "request {index}");
    }
    server.finish();
}

/// Sends a `POST /run` head that declares `length` bytes, and `sent` of them.
fn start_body(server: &Server, length: usize, sent: usize) -> TcpStream {
    let mut stream = connect(server);
    let head = format!("POST /run HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&vec![b' '; sent]).unwrap();
    stream
}

#[test]
fn request_bodies_in_memory_at_once_are_bounded() {
    // 1 MiB per body, 2,000,000 bytes for all of them (the file limit is set low so that
    // one upload's limit does not raise the budget).
    let server = Server::start_with(Options {
        args: [
            "--max-body-memory-bytes",
            "2000000",
            "--max-file-bytes",
            "65536",
        ]
        .map(String::from)
        .to_vec(),
        ..Options::default()
    });
    // Declaring a large body costs nothing: 64 idle connections that each declare
    // 1,000,000 bytes do not keep a small request out.
    let idle: Vec<TcpStream> = (0..64).map(|_| start_body(&server, 1_000_000, 1)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let small = exchange(
        &server,
        b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(small.status, 400, "{:?}", small.json());
    drop(idle);
    // Bodies that did arrive are held: two of 900,000 bytes, all but their last byte.
    let held: Vec<TcpStream> = (0..2)
        .map(|_| start_body(&server, 900_000, 900_000 - 1))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // A third large one does not fit: 503 as it arrives, and closed.
    let mut third = start_body(&server, 900_000, 0);
    let _ = third.write_all(&vec![b' '; 900_000]);
    let answer = read_answer(&mut BufReader::new(third.try_clone().unwrap())).expect("an answer");
    assert_eq!(answer.status, 503);
    assert!(
        answer.json()["error"]
            .as_str()
            .unwrap()
            .contains("request bodies"),
        "{:?}",
        answer.json()
    );
    assert!(closed_within(&mut third, Duration::from_secs(3)));
    // Once the held bodies' clients go away, their share is free again.
    drop(held);
    let back = crate::harness::eventually(Duration::from_secs(5), || {
        let mut stream = start_body(&server, 900_000, 0);
        let mut body = vec![b' '; 900_000 - 2];
        body.extend_from_slice(b"{}");
        stream.write_all(&body).unwrap();
        read_answer(&mut BufReader::new(stream)).is_some_and(|answer| answer.status == 400)
    });
    assert!(back, "the budget was not given back");
    // A body's share is given back once it is parsed, not when its command ends: two
    // runs holding 900 KB bodies for seconds leave room for a third.
    let stdin = "x".repeat(900_000);
    let body =
        json!({"command": ["sh", "-c", "cat >/dev/null; sleep 3"], "stdin": stdin}).to_string();
    let url = server.url("/run");
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            std::thread::spawn(move || crate::harness::request_url("POST", &url, Some(&body), &[]))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let (status, answer) = server.post("/run", &body);
    assert_eq!(status, 200, "{answer}");
    for run in slow {
        assert_eq!(run.join().unwrap().0, 200);
    }
    server.finish();
}

#[test]
fn shutdown_does_not_wait_for_requests_still_arriving() {
    let mut server = Server::start_with(Options {
        args: ["--head-timeout-secs", "120", "--client-timeout-secs", "120"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    });
    let mut half_head = connect(&server);
    half_head
        .write_all(b"POST /run HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let half_body = start_body(&server, 1000, 10);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let status = server.terminate();
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown waited {:?} for requests still arriving",
        started.elapsed()
    );
    let answer = read_answer(&mut BufReader::new(half_body)).expect("an answer");
    assert_eq!(answer.status, 503);
    assert!(closed_within(&mut half_head, Duration::from_secs(1)));
    let left = crate::harness::containers_of(&server.namespace);
    assert!(left.is_empty(), "containers left behind: {left:?}");
}

#[test]
fn a_large_json_body_costs_about_its_size_not_many_times_it() {
    let server = Server::start();
    // 20 MB of tiny array elements, the shape that costs most as a parsed JSON tree.
    let mut body = b"{\"content\":\"x\",\"x\":[0".to_vec();
    while body.len() < 20_000_000 {
        body.extend_from_slice(b",0");
    }
    body.extend_from_slice(b"]}");
    for _ in 0..2 {
        let mut stream = connect(&server);
        let head = format!(
            "PUT /sandboxes/nosuch/files/tmp/a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&body).unwrap();
        let answer = read_answer(&mut BufReader::new(stream)).expect("an answer");
        assert_eq!(answer.status, 400, "{:?}", answer.json());
    }
    let rss = server.peak_rss_kib();
    assert!(rss < 64 * 1024, "peak RSS {rss} KiB for a 20 MB body");
    server.finish();
}

/// Starts `POST path` with `body` on a fresh connection and hangs up at once.
fn send_and_hang_up(server: &Server, path: &str, body: &str) {
    let mut stream = connect(server);
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(stream);
}

#[test]
fn a_client_that_hangs_up_has_its_command_killed() {
    let server = Server::start_with(Options {
        args: ["--workers", "1"].map(String::from).to_vec(),
        ..Options::default()
    });
    let sleeper = r#"{"command":["sleep","600"],"timeout_ms":3600000}"#;
    // A one-shot run: the only worker is free again long before the command's deadline.
    send_and_hang_up(&server, "/run", sleeper);
    assert!(
        server
            .wait_for_log("POST /run 499", Duration::from_secs(20))
            .is_some(),
        "the cancelled run is logged 499"
    );
    let started = Instant::now();
    let (status, body) = server.post("/run", r#"{"command":["echo","next"]}"#);
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the next run waited {:?}",
        started.elapsed()
    );
    // An exec in a sandbox: its command is gone from the sandbox.
    assert_eq!(server.post("/sandboxes", r#"{"name":"gone"}"#).0, 201);
    send_and_hang_up(&server, "/sandboxes/gone/exec", sleeper);
    let killed = crate::harness::eventually(Duration::from_secs(10), || {
        let (_, body) = server.post("/sandboxes/gone/exec", r#"{"command":["ps","-o","args"]}"#);
        !body["data"]["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("sleep 600")
    });
    assert!(killed, "the exec's command outlived its client");
    assert_eq!(server.delete("/sandboxes/gone").0, 200);
    server.finish();
}

#[test]
fn health_answers_while_the_queue_is_full() {
    let server = Server::start_with(Options {
        args: ["--workers", "1", "--queue", "1"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    });
    let url = server.url("/run");
    // One run for the worker, then one for the queue (staggered, so that the worker
    // has taken the first when the second comes).
    let slow: Vec<_> = (0..2)
        .map(|index| {
            let url = url.clone();
            std::thread::sleep(Duration::from_millis(300 * index));
            std::thread::spawn(move || {
                crate::harness::request_url("POST", &url, Some(r#"{"command":["sleep","4"]}"#), &[])
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let (status, _) = server.post("/run", r#"{"command":["true"]}"#);
    assert_eq!(status, 503, "the queue should be full");
    let (status, body) = server.get("/health");
    assert_eq!(status, 200, "{body}");
    for run in slow {
        assert_eq!(run.join().unwrap().0, 200);
    }
    server.finish();
}
