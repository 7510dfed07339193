//! Small blocking clients for the servers a lab pod runs. They use the calling thread's network
//! namespace, so call them inside [`Lab::run_in_pod`](crate::Lab::run_in_pod).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

/// Connects, sends `payload`, half-closes, and returns everything read until EOF.
pub fn tcp_echo(addr: SocketAddr, payload: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let mut s = connect(addr, timeout)?;
    s.write_all(payload)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// A TCP connection with read/write timeouts set.
pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// Sends one request line over an open connection and reads exactly as many bytes back.
pub fn roundtrip(stream: &mut TcpStream, payload: &[u8]) -> io::Result<Vec<u8>> {
    stream.write_all(payload)?;
    let mut out = vec![0u8; payload.len()];
    stream.read_exact(&mut out)?;
    Ok(out)
}

/// Sends one datagram and returns the first answer.
pub fn udp_echo(addr: SocketAddr, payload: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    s.set_read_timeout(Some(timeout))?;
    s.connect(addr)?;
    s.send(payload)?;
    let mut buf = vec![0u8; 65536];
    let n = s.recv(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// `GET /` and returns the body of a 200 answer (a lab pod answers with its name).
pub fn http_get(addr: SocketAddr, timeout: Duration) -> io::Result<String> {
    http_get_path(addr, "/", timeout)
}

/// `GET path` and returns the body of a 200 answer (`/client`: the address the pod saw).
pub fn http_get_path(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<String> {
    let mut s = connect(addr, timeout)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no HTTP answer from {addr}: {text:?}"),
        )
    })?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{addr} answered {status:?}"),
        ));
    }
    Ok(body.to_string())
}
