//! The one HTTP request the agent ever makes: its enrolment, a JSON `POST` to the control
//! plane at first boot, before anything else runs. Blocking and minimal (HTTP/1.1, one
//! request per connection, `Connection: close`) instead of an HTTP client crate: it runs once
//! in the device's life, and the agent's size budget is better spent elsewhere. `https://`
//! goes through the same rustls configuration as the broker connection (`crate::tls`).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The largest answer read: an enrolment answer is a few hundred bytes.
const MAX_RESPONSE_BYTES: u64 = 256 * 1024;

/// Where the control plane is: `NEBULA_CONTROL_PLANE_URL`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub secure: bool,
    /// As written in the URL (an IPv6 address without its brackets).
    pub host: String,
    pub port: u16,
    /// A path prefix (a reverse proxy's), without a trailing slash; empty for none.
    pub prefix: String,
}

impl BaseUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        let (secure, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!(
                "{url:?}: expected http://host[:port] or https://host[:port]"
            ));
        };
        let (authority, path) = rest
            .split_once('/')
            .map_or((rest, ""), |(authority, path)| (authority, path));
        if authority.contains('@') {
            return Err(
                "no user or password in it: the provisioning token is the credential".into(),
            );
        }
        if path.contains(['?', '#']) {
            return Err("no query or fragment in it".into());
        }
        let default_port = if secure { 443 } else { 80 };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or("an IPv6 address needs its closing ]")?;
            match after {
                "" => (host, default_port),
                _ => (
                    host,
                    port_of(after.strip_prefix(':').ok_or("expected :port after ]")?)?,
                ),
            }
        } else {
            match authority.rsplit_once(':') {
                None => (authority, default_port),
                Some((host, port)) => (host, port_of(port)?),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        Ok(Self {
            secure,
            host: host.to_string(),
            port,
            prefix: match path.trim_end_matches('/') {
                "" => String::new(),
                path => format!("/{path}"),
            },
        })
    }

    /// The `Host` header's value.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.secure { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

fn port_of(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .ok()
        .filter(|port| *port > 0)
        .ok_or_else(|| format!("{text:?} is not a port"))
}

/// An answer: its status and body.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Response {
    // An enrolment's body holds the device's password.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Response")
            .field("status", &self.status)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// How the connection is encrypted: `None` for `http://`.
#[cfg(feature = "tls")]
pub type Tls = Option<std::sync::Arc<rustls::ClientConfig>>;
#[cfg(not(feature = "tls"))]
pub type Tls = Option<std::convert::Infallible>;

/// `POST`s `body` (JSON) to `path` under `base`, within `timeout` in all (connect, send, and
/// read). An error is the link's (connect, TLS, a truncated or unparsable answer): worth
/// retrying.
pub fn post_json(
    base: &BaseUrl,
    path: &str,
    body: &[u8],
    tls: &Tls,
    timeout: Duration,
) -> Result<Response, String> {
    let deadline = std::time::Instant::now() + timeout;
    let addresses: Vec<_> = (base.host.as_str(), base.port)
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {}: {error}", base.host))?
        .collect();
    // Every address in turn: a name's first one may be IPv6 on a network without it.
    let mut failures = Vec::new();
    let mut connected = None;
    for address in &addresses {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            failures.push(format!("{address}: no time left"));
            break;
        }
        match TcpStream::connect_timeout(address, left) {
            Ok(stream) => {
                connected = Some(stream);
                break;
            }
            Err(error) => failures.push(format!("{address}: {error}")),
        }
    }
    let stream = connected.ok_or_else(|| {
        if failures.is_empty() {
            format!("{} has no address", base.host)
        } else {
            format!("cannot connect to {}", failures.join(", "))
        }
    })?;
    for result in [
        stream.set_read_timeout(Some(timeout)),
        stream.set_write_timeout(Some(timeout)),
    ] {
        result.map_err(|error| error.to_string())?;
    }
    let mut request = format!(
        "POST {}{path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: nebula-agent/{}\r\n\r\n",
        base.prefix,
        base.host_header(),
        body.len(),
        env!("CARGO_PKG_VERSION"),
    )
    .into_bytes();
    request.extend_from_slice(body);
    exchange(base, stream, &request, tls, deadline)
}

#[cfg(feature = "tls")]
fn exchange(
    base: &BaseUrl,
    stream: TcpStream,
    request: &[u8],
    tls: &Tls,
    deadline: std::time::Instant,
) -> Result<Response, String> {
    match (base.secure, tls) {
        (false, _) => send(stream, request, deadline),
        (true, Some(config)) => {
            let name = rustls_pki_types::ServerName::try_from(base.host.clone())
                .map_err(|error| format!("{}: {error}", base.host))?;
            let connection = rustls::ClientConnection::new(std::sync::Arc::clone(config), name)
                .map_err(|error| format!("cannot set up TLS: {error}"))?;
            send(
                rustls::StreamOwned::new(connection, stream),
                request,
                deadline,
            )
        }
        (true, None) => Err("https:// without a TLS configuration".into()),
    }
}

#[cfg(not(feature = "tls"))]
fn exchange(
    base: &BaseUrl,
    stream: TcpStream,
    request: &[u8],
    _tls: &Tls,
    deadline: std::time::Instant,
) -> Result<Response, String> {
    if base.secure {
        return Err("this agent was built without TLS (the `tls` feature)".into());
    }
    send(stream, request, deadline)
}

/// Writes the request and reads the answer until it is whole (its `Content-Length`, its last
/// chunk, or the end of the connection), at most until `deadline`: a proxy may keep the
/// connection open after the answer, and a server sending a byte at a time must not hold the
/// agent for ever.
fn send(
    mut stream: impl Read + Write,
    request: &[u8],
    deadline: std::time::Instant,
) -> Result<Response, String> {
    stream
        .write_all(request)
        .and_then(|()| stream.flush())
        .map_err(|error| format!("cannot send the request: {error}"))?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        if std::time::Instant::now() >= deadline {
            return Err("the answer did not come whole in time".into());
        }
        let read = match stream.read(&mut buffer) {
            Ok(read) => read,
            // A TLS peer that closes without close_notify: what came may be whole.
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(format!("cannot read the answer: {error}")),
        };
        if read == 0 {
            return parse_response(&answer);
        }
        answer.extend_from_slice(&buffer[..read]);
        if u64::try_from(answer.len()).unwrap_or(u64::MAX) > MAX_RESPONSE_BYTES {
            return Err(format!("the answer is over {MAX_RESPONSE_BYTES} bytes"));
        }
        if let Some(response) = whole(&answer) {
            return Ok(response);
        }
    }
}

/// The answer, if `answer` holds all of it by its own framing (`Content-Length`, or the last
/// chunk); `None` while more is to come, or when only the end of the connection tells.
fn whole(answer: &[u8]) -> Option<Response> {
    let end = answer.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&answer[..end])
        .ok()?
        .to_ascii_lowercase();
    let framed =
        head.contains("\r\ncontent-length:") || head.contains("\r\ntransfer-encoding: chunked");
    if !framed {
        return None;
    }
    parse_response(answer).ok()
}

/// Parses an HTTP/1.1 answer read to the end of its connection: status line, headers, and a
/// body of `Content-Length` bytes, chunked, or up to the end.
pub fn parse_response(answer: &[u8]) -> Result<Response, String> {
    let end = answer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or("the answer ended before its headers did")?;
    let head =
        std::str::from_utf8(&answer[..end]).map_err(|_| "the answer's headers are not text")?;
    let rest = &answer[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|line| line.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer: {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(length) = length {
        rest.get(..length)
            .ok_or("the answer is shorter than its Content-Length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let truncated = || "a chunked answer ended early".to_string();
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|window| window == b"\r\n")
            .ok_or_else(truncated)?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| truncated())?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size".to_string())?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(rest.get(..size).ok_or_else(truncated)?);
        rest = rest.get(size + 2..).ok_or_else(truncated)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_parse_with_their_defaults() {
        let url = BaseUrl::parse("http://10.0.0.5:8080").expect("valid");
        assert_eq!(
            url,
            BaseUrl {
                secure: false,
                host: "10.0.0.5".into(),
                port: 8080,
                prefix: String::new()
            }
        );
        assert_eq!(url.host_header(), "10.0.0.5:8080");
        let url = BaseUrl::parse("https://nebula.example/api-proxy/").expect("valid");
        assert_eq!(
            (url.secure, url.port, url.prefix.as_str()),
            (true, 443, "/api-proxy")
        );
        assert_eq!(url.host_header(), "nebula.example");
        let url = BaseUrl::parse("http://[::1]:9000/").expect("valid");
        assert_eq!((url.host.as_str(), url.port), ("::1", 9000));
        assert_eq!(url.host_header(), "[::1]:9000");
        assert_eq!(BaseUrl::parse("http://[::1]").expect("valid").port, 80);
    }

    #[test]
    fn bad_base_urls_say_why() {
        for bad in [
            "nebula.example",
            "ftp://nebula.example",
            "http://",
            "http://:8080",
            "http://host:0",
            "http://host:99999",
            "http://host:port",
            "http://admin:secret@host",
            "http://host/?x=1",
            "http://[::1",
        ] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_parse_by_length_chunks_or_end() {
        let sized = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(
            parse_response(sized).expect("parse"),
            Response {
                status: 200,
                body: b"{}".to_vec()
            }
        );
        let chunked =
            b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\n{\"a\r\n2\r\n\"}\r\n0\r\n\r\n";
        let response = parse_response(chunked).expect("parse");
        assert_eq!(
            (response.status, response.body.as_slice()),
            (401, b"{\"a\"}".as_slice())
        );
        let to_the_end = b"HTTP/1.0 503 Service Unavailable\r\n\r\ndown";
        assert_eq!(parse_response(to_the_end).expect("parse").body, b"down");
    }

    #[test]
    fn truncated_or_foreign_answers_are_errors() {
        for bad in [
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}".as_slice(),
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_request_reaches_a_server_and_its_answer_comes_back() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.ends_with(b"{\"k\":1}") {
                let read = stream.read(&mut buffer).expect("read");
                assert!(read > 0, "the request ended early");
                request.extend_from_slice(&buffer[..read]);
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}")
                .expect("write");
            // Kept open until the client has read it: the client must not wait for the end.
            let _ = stream.read(&mut buffer);
            String::from_utf8(request).expect("text")
        });
        let base = BaseUrl::parse(&format!("http://127.0.0.1:{port}/prefix")).expect("url");
        let response = post_json(
            &base,
            "/api/v2/x",
            b"{\"k\":1}",
            &None,
            Duration::from_secs(5),
        )
        .expect("answer");
        assert_eq!(
            (response.status, response.body.as_slice()),
            (200, b"{\"ok\":true}".as_slice())
        );
        let request = server.join().expect("server");
        assert!(
            request.starts_with("POST /prefix/api/v2/x HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains(&format!("Host: 127.0.0.1:{port}\r\n")),
            "{request}"
        );
        assert!(request.contains("Content-Length: 7\r\n"), "{request}");
    }
}
