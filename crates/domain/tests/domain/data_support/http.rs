//! A tiny HTTP/1.1 server for tests: binds 127.0.0.1 only, serves at most `max_conns`
//! connections, and stops by itself after `deadline` (one response per connection).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Start offset of a `Range: bytes=N-` / `bytes=N-M` header.
    pub fn range_start(&self) -> Option<usize> {
        let r = self.header("range")?.strip_prefix("bytes=")?;
        r.split('-').next()?.parse().ok()
    }
}

/// A response; `send_only` cuts the body short (a truncated transfer) while keeping the
/// declared Content-Length.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub send_only: Option<usize>,
}

impl Response {
    pub fn new(status: u16, body: Vec<u8>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body,
            send_only: None,
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
}

/// A body served with Range support (206 + Content-Range when a range is asked for).
pub fn ranged(req: &Request, body: &[u8]) -> Response {
    match req.range_start() {
        Some(start) if start >= body.len() => Response::new(416, Vec::new()),
        Some(start) => {
            let end = req
                .header("range")
                .and_then(|r| r.rsplit('-').next())
                .and_then(|e| e.parse::<usize>().ok())
                .map_or(body.len() - 1, |e| e.min(body.len() - 1));
            Response::new(206, body[start..=end].to_vec()).header(
                "Content-Range",
                &format!("bytes {start}-{end}/{}", body.len()),
            )
        }
        None => Response::new(200, body.to_vec()),
    }
}

pub type Log = Arc<Mutex<Vec<Request>>>;

/// Starts the server; returns its base URL (`http://127.0.0.1:PORT`) and the request log.
pub fn serve<F>(max_conns: usize, deadline: Duration, handler: F) -> (String, Log)
where
    F: Fn(&Request) -> Response + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let log: Log = Arc::default();
    let log2 = log.clone();
    std::thread::spawn(move || {
        let end = Instant::now() + deadline;
        let mut served = 0;
        while served < max_conns && Instant::now() < end {
            let (stream, _) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(_) => break,
            };
            served += 1;
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
            let mut headers = Vec::new();
            loop {
                let mut l = String::new();
                if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
                if let Some((k, v)) = l.trim_end().split_once(':') {
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
            let req = Request { path, headers };
            log2.lock().unwrap().push(req.clone());
            let resp = handler(&req);
            let mut out = stream;
            let mut head = format!(
                "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                resp.status,
                resp.body.len()
            );
            for (k, v) in &resp.headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let n = resp.send_only.unwrap_or(resp.body.len());
            let _ = out.write_all(head.as_bytes());
            let _ = out.write_all(&resp.body[..n]);
            let _ = out.flush();
        }
    });
    (url, log)
}
