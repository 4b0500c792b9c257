//! A webhook receiver: an HTTP server on a port of its own that hands
//! each JSON body posted to it to the test.

use std::io::{BufRead, Read, Write};
use std::sync::mpsc;

/// Starts a receiver. Its URL (ending in `/hooks/secret-path`, a secret
/// as chat webhooks carry one) and the bodies it is sent, in order. With
/// `fail_first`, the first delivery is answered 500 (its body still
/// handed over), to test retries; the others 200.
pub fn receiver(fail_first: bool) -> (String, mpsc::Receiver<serde_json::Value>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/secret-path", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { return };
            let mut reader = std::io::BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let status = if n == 0 && fail_first { "500 Internal Server Error" } else { "200 OK" };
            let mut stream = reader.into_inner();
            let _ = write!(stream, "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if tx.send(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)).is_err() {
                return;
            }
        }
    });
    (url, rx)
}
