//! A unix socket in front of an engine that forwards every connection, and can cut the
//! engine off: by hand (`set_down`), or right after it has answered a request whose
//! request line contains a trigger (`cut_after`); it can also refuse only the requests
//! whose line contains some text (`refuse`). Cut off, it closes new connections
//! unanswered, which the server sees as an engine that went away. It makes the faults
//! a real engine cannot be timed to show: dying between two calls of a request, or
//! seeming down to the server's watch alone.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct Link {
    pub path: PathBuf,
    down: Arc<AtomicBool>,
    trigger: Arc<Mutex<Option<String>>>,
    refused: Arc<Mutex<Option<String>>>,
}

impl Link {
    pub fn start(engine: &Path, path: PathBuf) -> Link {
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind the link's socket");
        let down = Arc::new(AtomicBool::new(false));
        let trigger: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let refused: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let engine = engine.to_path_buf();
        let (flag, cut, refuse) = (
            Arc::clone(&down),
            Arc::clone(&trigger),
            Arc::clone(&refused),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                if flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let engine = engine.clone();
                let (flag, cut, refuse) =
                    (Arc::clone(&flag), Arc::clone(&cut), Arc::clone(&refuse));
                std::thread::spawn(move || forward(client, &engine, &flag, &cut, &refuse));
            }
        });
        Link {
            path,
            down,
            trigger,
            refused,
        }
    }

    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// Closes unanswered every connection whose request line contains `needle` (none
    /// with `None`).
    pub fn refuse(&self, needle: Option<&str>) {
        *self.refused.lock().unwrap() = needle.map(str::to_string);
    }

    /// Cuts the engine off once it has answered a request whose line contains `needle`.
    pub fn cut_after(&self, needle: &str) {
        *self.trigger.lock().unwrap() = Some(needle.to_string());
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn forward(
    mut client: UnixStream,
    engine: &Path,
    down: &AtomicBool,
    trigger: &Mutex<Option<String>>,
    refused: &Mutex<Option<String>>,
) {
    let Ok(mut upstream) = UnixStream::connect(engine) else {
        return;
    };
    // The request line decides whether this exchange pulls the trigger.
    let mut first = vec![0u8; 4096];
    let Ok(count) = client.read(&mut first) else {
        return;
    };
    first.truncate(count);
    let line = String::from_utf8_lossy(&first)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let refuse = refused
        .lock()
        .unwrap()
        .as_deref()
        .is_some_and(|needle| line.contains(needle));
    if refuse {
        return;
    }
    let pulls = trigger
        .lock()
        .unwrap()
        .as_deref()
        .is_some_and(|needle| line.contains(needle));
    if upstream.write_all(&first).is_err() {
        return;
    }
    let (Ok(mut client_read), Ok(mut upstream_write)) = (client.try_clone(), upstream.try_clone())
    else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut upstream_write);
        let _ = upstream_write.shutdown(std::net::Shutdown::Write);
    });
    // Cut off before the client has any of the answer: its next call finds the
    // engine gone.
    let mut answer = vec![0u8; 4096];
    let Ok(count) = upstream.read(&mut answer) else {
        return;
    };
    if pulls {
        down.store(true, Ordering::SeqCst);
        *trigger.lock().unwrap() = None;
    }
    if client.write_all(&answer[..count]).is_err() {
        return;
    }
    let _ = std::io::copy(&mut upstream, &mut client);
    let _ = client.shutdown(std::net::Shutdown::Write);
}
