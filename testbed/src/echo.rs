//! A TCP echo server inside a pod namespace, and one round trip over a connection: what tests
//! use to show that an established connection keeps (or stops) flowing across a change.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use anyhow::{Context, Result};

use super::netns::Netns;

/// Serves `addr` in `ns` until the process ends: every connection echoes what it receives.
pub fn serve(ns: &Netns, addr: SocketAddr) -> Result<()> {
    let listener = ns
        .run(move || TcpListener::bind(addr))?
        .with_context(|| format!("binding {addr} in {}", ns.name()))?;
    std::thread::Builder::new()
        .name(format!("echo-{addr}"))
        .spawn(move || {
            while let Ok((mut s, _)) = listener.accept() {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 256];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        })
        .context("spawning the echo server")?;
    Ok(())
}

/// Sends `msg` and reads it back: whether the connection still carries traffic.
pub fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> bool {
    let mut buf = vec![0u8; msg.len()];
    stream.write_all(msg).is_ok() && stream.read_exact(&mut buf).is_ok() && buf == msg
}
