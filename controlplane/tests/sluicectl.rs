//! The `sluicectl` binary as a shell user runs it, against a stand-in admin socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};

/// Serves one HTTP/1.1 request on `listener` with `body` as the 200 answer.
fn answer_once(listener: UnixListener, body: String) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("sluicectl connects");
        let mut req = [0u8; 4096];
        let _ = conn.read(&mut req);
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes());
        let _ = conn.write_all(body.as_bytes());
    })
}

/// `sluicectl config | head -1`: the reader goes away after one line, the program must end
/// quietly (no panic, exit 0), not abort with 134.
#[test]
fn closed_stdout_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("admin.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    // Far more than a pipe holds, so sluicectl is still writing when the reader leaves.
    let lines: Vec<String> = (0..20_000)
        .map(|i| format!("  \"key{i}\": \"some value to fill the pipe\","))
        .collect();
    let body = format!("{{\n{}\n  \"end\": 0\n}}\n", lines.join("\n"));
    let server = answer_once(listener, body);

    let mut child = Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .arg("--socket")
        .arg(&sock)
        .arg("config")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "{\n", "the first line of the configuration");
    // The reader is dropped here: the pipe is closed.
    let out = child.wait_with_output().unwrap();
    server.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "exit status; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

/// The same with `-o json` when sluiced cannot be reached: the JSON error goes to a closed
/// pipe, and the documented exit code (3) is kept rather than a panic.
#[test]
fn closed_stdout_keeps_exit_code_of_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .arg("--socket")
        .arg(dir.path().join("absent.sock"))
        .args(["-o", "json", "status"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    assert_eq!(out.status.code(), Some(3), "exit status; stderr: {stderr}");
}
