//! New TCP connections per second between two pods of a testbed node, shared by the
//! benchmarks that measure what a ruleset costs per connection (`packets`, `cnp`): a server
//! that accepts and closes at once, a client that connects, waits for the server's FIN and
//! closes, for `RUN`.
#![allow(dead_code)]

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use nftpol::policy::model::ObjectKey;
use nftpol_testbed::{NODE_NAME, Testbed};
use serde_json::{Value, json};

pub const CLIENT_IP: &str = "10.244.1.2";
pub const SERVER_IP: &str = "10.244.1.3";
pub const PORT: u16 = 8080;
pub const RUN: Duration = Duration::from_millis(1000);
pub const REPEATS: usize = 5;

/// Namespace `bench` with the client and server pods (the server declares port 80).
pub fn cluster() -> Vec<Value> {
    let pod = |name: &str, ip: &str| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "bench", "labels": {"app": name}},
            "spec": {"nodeName": NODE_NAME, "containers": [{"name": "c", "ports": [{"containerPort": 80}]}]},
            "status": {"phase": "Running", "podIP": ip}
        })
    };
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}),
        pod("client", CLIENT_IP),
        pod("server", SERVER_IP),
    ]
}

/// The network namespace of pod `bench/NAME` on the testbed.
pub fn pod_ns<'a>(bed: &'a Testbed, name: &str) -> &'a nftpol_testbed::netns::Netns {
    &bed.topology()
        .pods
        .iter()
        .find(|p| p.key == ObjectKey::new("bench", name))
        .expect("pod on the testbed")
        .ns
}

/// A server that accepts and closes at once: closing first leaves TIME_WAIT on the server
/// side, so the client never runs out of ports and no connection is reset.
pub fn serve(bed: &Testbed) -> anyhow::Result<()> {
    let listener = pod_ns(bed, "server").run(|| TcpListener::bind((SERVER_IP, PORT)))??;
    std::thread::spawn(move || while listener.accept().is_ok() {});
    Ok(())
}

/// New connections per second from the client to the server over `RUN` (connect, then wait
/// for the server's FIN, then close).
pub fn rate(bed: &Testbed) -> f64 {
    rate_for(bed, RUN)
}

/// [`rate`] over `run`.
pub fn rate_for(bed: &Testbed, run: Duration) -> f64 {
    let dst: SocketAddr = format!("{SERVER_IP}:{PORT}").parse().expect("addr");
    pod_ns(bed, "client")
        .run(move || {
            let start = Instant::now();
            let mut ok = 0u64;
            let mut buf = [0u8; 1];
            while start.elapsed() < run {
                if let Ok(mut s) = TcpStream::connect_timeout(&dst, Duration::from_secs(1)) {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    if matches!(s.read(&mut buf), Ok(0)) {
                        ok += 1;
                    }
                }
            }
            ok as f64 / start.elapsed().as_secs_f64()
        })
        .expect("run in the client namespace")
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
