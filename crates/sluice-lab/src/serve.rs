//! What a lab pod runs (`sluice lab serve`): TCP servers that answer HTTP requests with the
//! pod's name (`GET /client` with the address the request came from, to check source-IP
//! preservation) and echo anything else, and UDP servers that echo datagrams (`whoami` gets
//! the pod's name).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

/// The line printed on stdout once every socket is bound.
pub const READY: &str = "ready";
/// The UDP payload answered with the pod's name instead of an echo.
pub const WHOAMI: &[u8] = b"whoami";

const METHODS: &[&str] = &[
    "GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "OPTIONS ", "PATCH ",
];

/// Binds every port, prints [`READY`], then serves forever (until killed).
pub fn run(pod: &str, tcp: &[u16], udp: &[u16]) -> io::Result<()> {
    let mut threads = Vec::new();
    for &port in tcp {
        let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
            .map_err(|e| io::Error::new(e.kind(), format!("bind TCP port {port}: {e}")))?;
        let pod = pod.to_string();
        threads.push(std::thread::spawn(move || serve_tcp(l, &pod)));
    }
    for &port in udp {
        let s = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
            .map_err(|e| io::Error::new(e.kind(), format!("bind UDP port {port}: {e}")))?;
        let pod = pod.to_string();
        threads.push(std::thread::spawn(move || serve_udp(s, &pod)));
    }
    let mut out = io::stdout();
    writeln!(out, "{READY}")?;
    out.flush()?;
    eprintln!("pod {pod}: serving TCP {tcp:?} UDP {udp:?}");
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn serve_tcp(listener: TcpListener, pod: &str) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let pod = pod.to_string();
                std::thread::spawn(move || {
                    if let Err(e) = handle_tcp(stream, &pod) {
                        eprintln!("pod {pod}: TCP connection: {e}");
                    }
                });
            }
            Err(e) => eprintln!("pod {pod}: accept: {e}"),
        }
    }
}

/// What the first bytes of a connection say it is.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Http,
    Echo,
    /// Could still become an HTTP request line.
    Undecided,
}

fn classify(head: &[u8]) -> Kind {
    for m in METHODS {
        let m = m.as_bytes();
        if head.starts_with(m) {
            return Kind::Http;
        }
        if m.starts_with(head) {
            return Kind::Undecided;
        }
    }
    Kind::Echo
}

fn handle_tcp(mut stream: TcpStream, pod: &str) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    // Read until the first bytes decide between HTTP and echo (a short wait for a split method).
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let kind = loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break Kind::Echo
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            break Kind::Echo;
        }
        head.extend_from_slice(&buf[..n]);
        match classify(&head) {
            Kind::Undecided => continue,
            k => break k,
        }
    };
    stream.set_read_timeout(None)?;
    if kind == Kind::Http {
        // Read the rest of the request head (bounded), then answer and close.
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let path = head
            .split(|b| *b == b' ')
            .nth(1)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let body = if path == "/client" {
            format!("{}\n", stream.peer_addr()?.ip())
        } else {
            format!("{pod}\n")
        };
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes())?;
        return stream.shutdown(std::net::Shutdown::Both);
    }
    stream.write_all(&head)?;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return stream.shutdown(std::net::Shutdown::Write);
        }
        stream.write_all(&buf[..n])?;
    }
}

fn serve_udp(socket: UdpSocket, pod: &str) {
    let mut buf = [0u8; 65536];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                let answer: &[u8] = if &buf[..n] == WHOAMI {
                    pod.as_bytes()
                } else {
                    &buf[..n]
                };
                if let Err(e) = socket.send_to(answer, from) {
                    eprintln!("pod {pod}: UDP send to {from}: {e}");
                }
            }
            Err(e) => eprintln!("pod {pod}: UDP receive: {e}"),
        }
    }
}

/// Parses `80,81` (empty = none).
pub fn parse_ports(text: &str) -> Result<Vec<u16>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!("{s:?} is not a port (1-65535)")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe;

    #[test]
    fn classification() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Kind::Http);
        assert_eq!(classify(b"GE"), Kind::Undecided);
        assert_eq!(classify(b"hello"), Kind::Echo);
        assert_eq!(classify(b"GETTY"), Kind::Echo);
    }

    #[test]
    fn ports() {
        assert_eq!(parse_ports("80, 81").unwrap(), [80, 81]);
        assert_eq!(parse_ports("").unwrap(), Vec::<u16>::new());
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("70000").unwrap_err().contains("70000"));
    }

    #[test]
    fn tcp_http_and_udp_on_loopback() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (ta, ua) = (tcp.local_addr().unwrap(), udp.local_addr().unwrap());
        std::thread::spawn(move || serve_tcp(tcp, "x/a"));
        std::thread::spawn(move || serve_udp(udp, "x/a"));
        let t = Duration::from_secs(5);
        assert_eq!(probe::http_get(ta, t).unwrap(), "x/a\n");
        assert_eq!(
            probe::http_get_path(ta, "/client", t).unwrap(),
            "127.0.0.1\n"
        );
        assert_eq!(
            probe::tcp_echo(ta, b"hello there", t).unwrap(),
            b"hello there"
        );
        assert_eq!(probe::tcp_echo(ta, b"G", t).unwrap(), b"G");
        assert_eq!(probe::udp_echo(ua, b"ping", t).unwrap(), b"ping");
        assert_eq!(probe::udp_echo(ua, WHOAMI, t).unwrap(), b"x/a");
    }
}
