//! The files API: reads and writes through the archive endpoints (root filesystem) and
//! through the stub (tmpfs), byte-exact binary content, batches, path rules, limits,
//! read-only roots and stopped sandboxes.

use std::time::{Duration, Instant};

use agentkernel::codec::base64;
use serde_json::{json, Value};

use crate::harness::{Options, Server};

fn create(server: &Server, body: &str) {
    let (status, answer) = server.post("/sandboxes", body);
    assert_eq!(status, 201, "{answer}");
}

fn put(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    server.request("PUT", path, Some(&body.to_string()), &[])
}

fn exec_output(server: &Server, sandbox: &str, script: &str) -> String {
    let body = json!({ "command": ["sh", "-c", script] }).to_string();
    let (status, answer) = server.post(&format!("/sandboxes/{sandbox}/exec"), &body);
    assert_eq!(status, 200, "{answer}");
    answer["data"]["output"].as_str().unwrap().to_string()
}

/// Every byte value, then `extra` bytes of a fixed xorshift sequence.
fn binary_content(extra: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..=255).collect();
    let mut state: u32 = 0x9e37_79b9;
    for _ in 0..extra {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        bytes.push(state as u8);
    }
    bytes
}

#[test]
fn text_round_trips_on_the_root_filesystem_and_in_tmp() {
    let server = Server::start();
    create(&server, r#"{"name":"text"}"#);
    for (url, path) in [
        (
            "/sandboxes/text/files/root/notes/a.txt",
            "/root/notes/a.txt",
        ),
        ("/sandboxes/text/files/tmp/notes/a.txt", "/tmp/notes/a.txt"),
    ] {
        let content = format!("héllo from {path}\nline two\n");
        let (status, answer) = put(&server, url, &json!({ "content": content }));
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            answer["data"],
            json!({ "path": path, "size": content.len() })
        );
        let (status, answer) = server.get(url);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            answer["data"],
            json!({ "content": content, "encoding": "utf8", "size": content.len() })
        );
        // The running container sees what was written (the tmpfs pitfall: an archive
        // upload to /tmp would land hidden under the mount).
        assert_eq!(
            exec_output(&server, "text", &format!("cat {path}")),
            content
        );
    }
    // Written from inside, read through both URL spellings.
    exec_output(&server, "text", "printf inside > /tmp/x");
    for url in [
        "/sandboxes/text/files//tmp/x",
        "/sandboxes/text/files/tmp/x",
    ] {
        let (status, answer) = server.get(url);
        assert_eq!(status, 200, "{url}: {answer}");
        assert_eq!(answer["data"]["content"], json!("inside"));
    }
    // An explicit null encoding is the default.
    let body = json!({ "content": "v2", "encoding": null });
    let (status, _) = put(&server, "/sandboxes/text/files//tmp/x", &body);
    assert_eq!(status, 200);
    assert_eq!(exec_output(&server, "text", "cat /tmp/x"), "v2");

    for (url, path) in [
        ("/sandboxes/text/files/tmp/x", "/tmp/x"),
        (
            "/sandboxes/text/files/root/notes/a.txt",
            "/root/notes/a.txt",
        ),
    ] {
        let (status, answer) = server.delete(url);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["data"], json!({ "path": path, "deleted": true }));
        let (status, answer) = server.get(url);
        assert_eq!(status, 404, "{answer}");
        assert_eq!(
            answer["error"],
            json!(format!("File '{path}' not found in sandbox 'text'"))
        );
        let (status, _) = server.delete(url);
        assert_eq!(status, 404);
    }
    server.delete("/sandboxes/text");
    server.finish();
}

#[test]
fn binary_files_round_trip_byte_exact_through_base64() {
    let server = Server::start();
    create(&server, r#"{"name":"bin"}"#);
    let content = binary_content(64 * 1024);
    let encoded = base64::encode(&content);
    for path in ["/root/blob.bin", "/tmp/blob.bin"] {
        let url = format!("/sandboxes/bin/files{path}");
        let body = json!({ "content": encoded, "encoding": "base64" });
        let (status, answer) = put(&server, &url, &body);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["data"]["size"], json!(content.len()));
        let (status, answer) = server.get(&url);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["data"]["encoding"], json!("base64"));
        assert_eq!(answer["data"]["size"], json!(content.len()));
        let read = base64::decode(answer["data"]["content"].as_str().unwrap()).unwrap();
        assert!(read == content, "{path} did not round-trip byte-exact");
        // The container's own view: same size, same first bytes.
        let listed = exec_output(
            &server,
            "bin",
            &format!("wc -c < {path}; od -An -tx1 -N4 {path}"),
        );
        assert_eq!(
            listed.split_whitespace().collect::<Vec<_>>(),
            [&content.len().to_string(), "00", "01", "02", "03"],
            "{path}"
        );
    }
    // Written inside as bytes that are not UTF-8, read back as base64.
    exec_output(&server, "bin", "printf '\\377\\376A' > /tmp/raw");
    let (_, answer) = server.get("/sandboxes/bin/files/tmp/raw");
    assert_eq!(
        answer["data"],
        json!({ "content": "//5B", "encoding": "base64", "size": 3 })
    );
    server.delete("/sandboxes/bin");
    server.finish();
}

#[test]
fn a_hundred_files_in_one_batch() {
    let server = Server::start();
    create(&server, r#"{"name":"many"}"#);
    for dir in ["/tmp/many", "root/many"] {
        let files: serde_json::Map<String, Value> = (0..100)
            .map(|index| {
                (
                    format!("{dir}/{index}.txt"),
                    json!(format!("file {index}\n")),
                )
            })
            .collect();
        let body = json!({ "files": files }).to_string();
        let started = Instant::now();
        let (status, answer) = server.post("/sandboxes/many/files", &body);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["data"], json!({ "written": 100 }));
        // One upload, not a hundred: well under a second even on a slow machine.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "batch took {:?}",
            started.elapsed()
        );
        let absolute = format!("/{}", dir.trim_start_matches('/'));
        let counted = exec_output(&server, "many", &format!("ls {absolute} | wc -l"));
        assert_eq!(counted.trim(), "100", "{dir}");
        for index in [0, 42, 99] {
            let (status, answer) =
                server.get(&format!("/sandboxes/many/files{absolute}/{index}.txt"));
            assert_eq!(status, 200, "{answer}");
            assert_eq!(answer["data"]["content"], json!(format!("file {index}\n")));
        }
    }
    // Keys go through the path rules: one bad key refuses the whole batch.
    let (status, answer) = server.post(
        "/sandboxes/many/files",
        r#"{"files":{"/tmp/ok":"1","/tmp/../etc/x":"2"}}"#,
    );
    assert_eq!(status, 400, "{answer}");
    let (status, _) = server.get("/sandboxes/many/files/tmp/ok");
    assert_eq!(status, 404, "nothing of a refused batch is written");
    server.delete("/sandboxes/many");
    server.finish();
}

#[test]
fn paths_and_errors_name_the_thing() {
    let server = Server::start();
    create(&server, r#"{"name":"errs"}"#);
    // Raw request lines: HTTP clients would remove the dot segments themselves.
    for target in [
        "/sandboxes/errs/files/tmp/../etc/passwd",
        "/sandboxes/errs/files/tmp/%2e%2e/etc/passwd",
        "/sandboxes/errs/files/tmp/%00",
    ] {
        let answer = server.raw(
            format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
    }
    let cases = [
        (
            "/sandboxes/errs/files/nope.txt",
            404,
            "File '/nope.txt' not found in sandbox 'errs'",
        ),
        (
            "/sandboxes/errs/files/tmp/nope",
            404,
            "File '/tmp/nope' not found",
        ),
        ("/sandboxes/errs/files/etc", 400, "'/etc' is a directory"),
        ("/sandboxes/errs/files/tmp", 400, "'/tmp' is a directory"),
        (
            "/sandboxes/ghost/files/tmp/x",
            404,
            "Sandbox 'ghost' not found",
        ),
    ];
    for (url, expected_status, expected) in cases {
        let (status, answer) = server.get(url);
        assert_eq!(status, expected_status, "{url}: {answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(message.contains(expected), "{url}: {message}");
    }
    // Symlinks are followed on the root filesystem.
    exec_output(
        &server,
        "errs",
        "echo target > /root/t && ln -s t /root/link",
    );
    let (_, answer) = server.get("/sandboxes/errs/files/root/link");
    assert_eq!(answer["data"]["content"], json!("target\n"));
    // A file never replaces a directory.
    let (status, answer) = put(
        &server,
        "/sandboxes/errs/files/etc",
        &json!({"content": "x"}),
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        answer["error"],
        json!("'/etc' is a directory, not a regular file")
    );
    assert_eq!(
        exec_output(&server, "errs", "test -f /etc/passwd && echo kept"),
        "kept\n"
    );
    // Nor is a file made a directory (the engine names the path, its error is typed).
    exec_output(&server, "errs", "echo plain > /root/plain");
    for url in ["/root/plain/x", "/root/plain/deeper/x"] {
        let (status, answer) = put(
            &server,
            &format!("/sandboxes/errs/files{url}"),
            &json!({"content": "x"}),
        );
        assert_eq!(status, 400, "{url}: {answer}");
        assert_eq!(
            answer["error"],
            json!(format!(
                "Cannot write '{url}': one of its parents is a file, not a directory"
            ))
        );
    }
    server.delete("/sandboxes/errs");
    server.finish();
}

#[test]
fn files_over_the_limit_are_413() {
    let server = Server::start_with(Options {
        args: vec!["--max-file-bytes".into(), "1000".into()],
        ..Options::default()
    });
    create(&server, r#"{"name":"big"}"#);
    for dir in ["/root", "/tmp"] {
        let url = format!("/sandboxes/big/files{dir}/f");
        let (status, answer) = put(&server, &url, &json!({ "content": "x".repeat(1000) }));
        assert_eq!(status, 200, "{answer}");
        let (status, answer) = put(&server, &url, &json!({ "content": "x".repeat(1001) }));
        assert_eq!(status, 413, "{answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(
            message.contains(&format!("'{dir}/f'")) && message.contains("1000"),
            "{message}"
        );
        // A file made inside is refused on the way out.
        exec_output(
            &server,
            "big",
            &format!("head -c 5000 /dev/zero > {dir}/made"),
        );
        let (status, answer) = server.get(&format!("/sandboxes/big/files{dir}/made"));
        assert_eq!(status, 413, "{dir}: {answer}");
    }
    let body = json!({ "files": { "/tmp/a": "ok", "/tmp/b": "y".repeat(1001) } }).to_string();
    let (status, _) = server.post("/sandboxes/big/files", &body);
    assert_eq!(status, 413);
    // A body over the upload limit is refused from its Content-Length, unread.
    let answer = server.raw(
        b"PUT /sandboxes/big/files/tmp/x HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    server.delete("/sandboxes/big");
    server.finish();
}

#[test]
fn uploads_may_be_larger_than_ordinary_bodies() {
    let server = Server::start();
    create(&server, r#"{"name":"upload"}"#);
    // 2 MiB of content is past the 1 MiB body limit of other routes.
    let content = binary_content(2 * 1024 * 1024);
    let body = json!({ "content": base64::encode(&content), "encoding": "base64" });
    let (status, answer) = put(&server, "/sandboxes/upload/files/root/large", &body);
    assert_eq!(status, 200, "{answer}");
    let (_, answer) = server.get("/sandboxes/upload/files/root/large");
    let read = base64::decode(answer["data"]["content"].as_str().unwrap()).unwrap();
    assert!(read == content);
    let (status, _) = server.post("/sandboxes/upload/exec", &body.to_string());
    assert_eq!(status, 413, "other routes keep the ordinary limit");
    server.delete("/sandboxes/upload");
    server.finish();
}

#[test]
fn restrictive_sandboxes_write_to_tmp_but_not_to_their_read_only_root() {
    let server = Server::start();
    create(&server, r#"{"name":"locked","profile":"restrictive"}"#);
    let (status, answer) = put(
        &server,
        "/sandboxes/locked/files/etc/x",
        &json!({"content": "x"}),
    );
    assert_eq!(status, 403, "{answer}");
    let message = answer["error"].as_str().unwrap();
    assert!(
        message.contains("'/etc/x'")
            && message.contains("read-only")
            && message.contains("restrictive"),
        "{message}"
    );
    let (status, answer) = put(
        &server,
        "/sandboxes/locked/files/tmp/x",
        &json!({"content": "ok"}),
    );
    assert_eq!(status, 200, "{answer}");
    let (_, answer) = server.get("/sandboxes/locked/files/tmp/x");
    assert_eq!(answer["data"]["content"], json!("ok"));
    // Written as the profile's user, not as root.
    assert_eq!(
        exec_output(&server, "locked", "stat -c %u:%g /tmp/x"),
        "65534:65534\n"
    );
    let (status, answer) = server.delete("/sandboxes/locked/files/etc/passwd");
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = server.post(
        "/sandboxes/locked/files",
        r#"{"files":{"/tmp/a":"1","/etc/b":"2"}}"#,
    );
    assert_eq!(status, 403, "{answer}");
    // Reading the root filesystem is fine.
    let (status, answer) = server.get("/sandboxes/locked/files/etc/passwd");
    assert_eq!(status, 200, "{answer}");
    assert!(answer["data"]["content"]
        .as_str()
        .unwrap()
        .contains("nobody"));
    server.delete("/sandboxes/locked");
    server.finish();
}

#[test]
fn stopped_sandboxes_serve_their_root_filesystem_and_tmp_but_not_tmpfs() {
    let server = Server::start();
    // A writable root keeps `/tmp` (no tmpfs): its files survive a stop.
    create(&server, r#"{"name":"sleepy"}"#);
    // A read-only root keeps its `/tmp` tmpfs, which a stop empties.
    create(&server, r#"{"name":"locked","profile":"restrictive"}"#);
    for (name, file) in [
        ("sleepy", "root/a"),
        ("sleepy", "tmp/t"),
        ("locked", "tmp/t"),
    ] {
        let url = format!("/sandboxes/{name}/files/{file}");
        let (status, answer) = put(&server, &url, &json!({"content": "kept"}));
        assert_eq!(status, 200, "{url}: {answer}");
    }
    for name in ["sleepy", "locked"] {
        let (status, _) = server.post(&format!("/sandboxes/{name}/stop"), "");
        assert_eq!(status, 200);
    }
    for url in [
        "/sandboxes/sleepy/files/root/a",
        "/sandboxes/sleepy/files/tmp/t",
    ] {
        let (status, answer) = server.get(url);
        assert_eq!(
            (status, &answer["data"]["content"]),
            (200, &json!("kept")),
            "{url}: {answer}"
        );
    }
    for file in ["root/b", "tmp/u"] {
        let url = format!("/sandboxes/sleepy/files/{file}");
        let (status, answer) = put(&server, &url, &json!({"content": "b"}));
        assert_eq!(status, 200, "{url}: {answer}");
    }
    for (method, url) in [
        ("GET", "/sandboxes/locked/files/tmp/t"),
        ("PUT", "/sandboxes/locked/files/tmp/u"),
        ("DELETE", "/sandboxes/sleepy/files/root/a"),
    ] {
        let body = (method == "PUT").then_some(r#"{"content":"u"}"#);
        let (status, answer) = server.request(method, url, body, &[]);
        assert_eq!(status, 409, "{method} {url}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("is stopped"),
            "{answer}"
        );
    }

    for name in ["sleepy", "locked"] {
        let (status, _) = server.post(&format!("/sandboxes/{name}/start"), "");
        assert_eq!(status, 200);
    }
    assert_eq!(
        exec_output(&server, "sleepy", "cat /root/a /root/b /tmp/t /tmp/u"),
        "keptbkeptb"
    );
    assert_eq!(exec_output(&server, "sleepy", "stat -c %a /tmp"), "1777\n");
    // Detached commands' output keeps its bound: a tmpfs of its own.
    assert_eq!(
        exec_output(
            &server,
            "sleepy",
            "mount | grep -c ' /tmp/.agentkernel-detached '"
        ),
        "1\n"
    );
    assert_eq!(
        exec_output(&server, "locked", "ls /tmp; mount | grep -c ' /tmp '"),
        "1\n"
    );
    server.delete("/sandboxes/sleepy");
    server.delete("/sandboxes/locked");
    server.finish();
}

/// Bytes of an answer, and its status and content type.
fn get_bytes(server: &Server, path: &str) -> (u16, String, Vec<u8>) {
    let answer = match ureq::get(&server.url(path)).call() {
        Ok(answer) | Err(ureq::Error::Status(_, answer)) => answer,
        Err(error) => panic!("GET {path}: {error}"),
    };
    let (status, kind) = (answer.status(), answer.content_type().to_string());
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut answer.into_reader(), &mut bytes).unwrap();
    (status, kind, bytes)
}

fn put_bytes(server: &Server, path: &str, bytes: &[u8]) -> (u16, Value) {
    let answer = match ureq::put(&server.url(path))
        .set("Content-Type", "application/x-tar")
        .send_bytes(bytes)
    {
        Ok(answer) | Err(ureq::Error::Status(_, answer)) => answer,
        Err(error) => panic!("PUT {path}: {error}"),
    };
    (answer.status(), answer.into_json().unwrap())
}

/// A tar of raw headers: (name, typeflag, link target, data).
fn tar_of(members: &[(&str, u8, &str, &[u8])]) -> Vec<u8> {
    let mut archive = Vec::new();
    for (name, kind, link, data) in members {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        header[100..107].copy_from_slice(b"0000644");
        header[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        header[136..147].copy_from_slice(b"00000000000");
        header[156] = *kind;
        header[157..157 + link.len()].copy_from_slice(link.as_bytes());
        header[257..265].copy_from_slice(b"ustar\x0000");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        archive.extend_from_slice(&header);
        archive.extend_from_slice(data);
        archive.resize(archive.len().div_ceil(512) * 512, 0);
    }
    archive.extend_from_slice(&[0u8; 1024]);
    archive
}

#[test]
fn directories_go_out_and_in_as_tar_archives_and_nothing_escapes() {
    let server = Server::start();
    create(&server, r#"{"name":"arc"}"#);
    exec_output(
        &server,
        "arc",
        "mkdir -p /work/src/sub /work/copy /work/empty && echo a > /work/src/a && \
         echo b > /work/src/sub/b && ln -s a /work/src/link",
    );
    let (status, kind, archive) = get_bytes(&server, "/sandboxes/arc/archive?path=/work/src");
    assert_eq!((status, kind.as_str()), (200, "application/x-tar"));
    let mut names = Vec::new();
    let mut reader = archive.as_slice();
    while let Ok(entry) = agentkernel::codec::tar::read_first_entry(&mut reader, 1 << 20) {
        names.push(entry.name.trim_end_matches('/').to_string());
    }
    names.sort();
    assert_eq!(names, ["src", "src/a", "src/link", "src/sub", "src/sub/b"]);

    let (status, answer) = put_bytes(&server, "/sandboxes/arc/archive?path=/work/copy", &archive);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"], json!({"path": "/work/copy", "members": 5}));
    assert_eq!(
        exec_output(
            &server,
            "arc",
            "cat /work/copy/src/a /work/copy/src/sub/b; readlink /work/copy/src/link"
        ),
        "a\nb\na\n"
    );

    // Any member that could land outside refuses the whole archive: nothing is written.
    for (member, why) in [
        (("/etc/x", b'0', "", &b"x"[..]), "absolute name"),
        (("../x", b'0', "", &b"x"[..]), "'..'"),
        (("l", b'2', "/etc", &b""[..]), "absolute path"),
        (("d/l", b'2', "../../..", &b""[..]), "outside"),
        (("h", b'1', "ok", &b""[..]), "hard link"),
        (("null", b'3', "", &b""[..]), "special file"),
    ] {
        let tar = tar_of(&[("ok", b'0', "", b"fine"), member]);
        let (status, answer) = put_bytes(&server, "/sandboxes/arc/archive?path=/work/empty", &tar);
        assert_eq!(status, 400, "{member:?}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(why) && error.contains(member.0), "{error}");
    }
    assert_eq!(
        exec_output(&server, "arc", "ls -A /work/empty | wc -l"),
        "0\n"
    );
    let (status, answer) = put_bytes(&server, "/sandboxes/arc/archive?path=/work/empty", b"junk");
    assert_eq!(status, 400, "{answer}");

    // Errors name what is wrong.
    let tar = tar_of(&[("f", b'0', "", b"x")]);
    let (status, answer) = put_bytes(&server, "/sandboxes/arc/archive?path=/work/nope", &tar);
    assert_eq!(status, 404, "{answer}");
    // A large one too: the engine refuses it before reading it, and its answer (not
    // the broken pipe of the rest) is the answer.
    let large = tar_of(&[("f", b'0', "", &vec![7u8; 4 * 1024 * 1024])]);
    let (status, answer) = put_bytes(&server, "/sandboxes/arc/archive?path=/work/nope", &large);
    assert_eq!(status, 404, "{answer}");
    assert_eq!(
        get_bytes(&server, "/sandboxes/arc/archive?path=/nope").0,
        404
    );
    assert_eq!(
        get_bytes(&server, "/sandboxes/arc/archive?path=/proc/self").0,
        400
    );
    assert_eq!(get_bytes(&server, "/sandboxes/arc/archive").0, 400);
    assert_eq!(
        get_bytes(&server, "/sandboxes/arc/archive?path=/a/../b").0,
        400
    );
    assert_eq!(
        get_bytes(&server, "/sandboxes/none/archive?path=/work").0,
        404
    );

    // A stopped sandbox's root filesystem is there all the same.
    assert_eq!(server.post("/sandboxes/arc/stop", "").0, 200);
    assert_eq!(
        get_bytes(&server, "/sandboxes/arc/archive?path=/work/copy").0,
        200
    );
    assert_eq!(server.delete("/sandboxes/arc").0, 200);

    // A read-only root refuses extraction (403).
    create(&server, r#"{"name":"ro","profile":"restrictive"}"#);
    let (status, answer) = put_bytes(&server, "/sandboxes/ro/archive?path=/work", &tar);
    assert_eq!(status, 403, "{answer}");
    assert_eq!(server.delete("/sandboxes/ro").0, 200);
    server.finish();
}

#[test]
fn an_archive_over_the_file_limit_is_a_413() {
    let server = Server::start_with(Options {
        args: vec!["--max-file-bytes".into(), "8192".into()],
        ..Options::default()
    });
    create(&server, r#"{"name":"big"}"#);
    exec_output(
        &server,
        "big",
        "mkdir /work/big && head -c 20000 /dev/zero > /work/big/f",
    );
    let (status, _, body) = get_bytes(&server, "/sandboxes/big/archive?path=/work/big");
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    // A body over the limit (the file limit and 64 KiB of headers) is refused from its
    // Content-Length, before it is read.
    let answer = server.raw(
        b"PUT /sandboxes/big/archive?path=/work HTTP/1.1\r\nHost: x\r\n\
          Content-Length: 100000\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(server.delete("/sandboxes/big").0, 200);
    server.finish();
}
