//! DNS round-trip latency through the `domainNames` hold (`cargo bench --bench dns`, root): two
//! client pods ask a resolver pod on a routed testbed node, over UDP, taking turns query by
//! query (so that both see the same load on a shared machine):
//! - `plain`, which no policy selects (its answers never leave the kernel): the baseline;
//! - `client`, with a ClusterNetworkPolicy `domainNames` rule for the name: every answer is held
//!   in the NFQUEUE until its address is committed (parse, one netlink transaction, verdict).
//!
//! Then the same again with 1,000 addresses already learned in the rule's set.
//!
//! Prints p50 and p99 of each and the added latency; asserts nothing about time (the target is
//! p99 added latency under 1 ms).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use nftpol::dataplane::dns::{LearnSocket, Learned};
use nftpol::policy::model::{ClusterState, ObjectKey};
use nftpol_testbed::dns::Record;
use nftpol_testbed::{Mode, NODE_NAME, Testbed};
use serde_json::{Value, json};
use simple_dns::{CLASS, Name, Packet};

const CLIENT: &str = "10.244.1.2";
const RESOLVER: &str = "10.244.1.3";
const PLAIN: &str = "10.244.1.4";
const API: &str = "10.244.2.4";
const QUERIES: usize = 3000;
const WARMUP: usize = 200;
const SET: &str = "d4/c/bench/e1";

fn objects(policy: bool) -> Vec<Value> {
    let pod = |ns: &str, name: &str, ip: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
               "spec": {"nodeName": NODE_NAME, "containers": [{"name": "c"}]},
               "status": {"phase": "Running", "podIP": ip}})
    };
    let ns = |n: &str| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}});
    let mut out = vec![
        ns("x"),
        ns("y"),
        pod("x", "client", CLIENT),
        pod("x", "plain", PLAIN),
        pod("x", "dns", RESOLVER),
        pod("y", "api", API),
    ];
    if policy {
        out.push(json!({"apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "bench"},
            "spec": {"tier": "Admin", "priority": 1,
                     "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "client"}}}},
                     "egress": [
                         {"action": "Accept", "to": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "dns"}}}}],
                          "protocols": [{"udp": {"destinationPort": {"number": 53}}}]},
                         {"action": "Accept", "to": [{"domainNames": ["api.example.com"]}]},
                         {"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]}}));
    }
    out
}

fn serve(sock: UdpSocket) {
    let api: Ipv4Addr = API.parse().expect("API is an address");
    nftpol_testbed::dns::serve_udp(sock, move |name| {
        (name == "api.example.com").then_some((Record::A(api), 300))
    });
}

fn query() -> Vec<u8> {
    let mut p = Packet::new_query(1);
    p.questions.push(simple_dns::Question::new(
        Name::new_unchecked("api.example.com"),
        simple_dns::QTYPE::TYPE(simple_dns::TYPE::A),
        simple_dns::QCLASS::CLASS(CLASS::IN),
        false,
    ));
    p.build_bytes_vec().unwrap()
}

/// A UDP socket in `pod`'s namespace (a socket stays in the namespace it was made in).
fn socket(bed: &Testbed, pod: &str) -> UdpSocket {
    let s = bed
        .pod_netns(&ObjectKey::new("x", pod))
        .unwrap()
        .run(|| UdpSocket::bind("0.0.0.0:0"))
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// Round-trip times of `QUERIES` queries from each of `plain` and `client`, in turns, after a
/// warm-up: (plain, client).
fn round_trips(bed: &Testbed) -> (Vec<Duration>, Vec<Duration>) {
    let socks = [socket(bed, "plain"), socket(bed, "client")];
    let server = SocketAddr::new(RESOLVER.parse().unwrap(), 53);
    let q = query();
    let mut buf = [0u8; 1500];
    let mut out = (Vec::with_capacity(QUERIES), Vec::with_capacity(QUERIES));
    for i in 0..WARMUP + QUERIES {
        for (k, s) in socks.iter().enumerate() {
            let t0 = Instant::now();
            s.send_to(&q, server).unwrap();
            s.recv(&mut buf).expect("an answer");
            if i >= WARMUP {
                if k == 0 {
                    out.0.push(t0.elapsed())
                } else {
                    out.1.push(t0.elapsed())
                }
            }
        }
    }
    out
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    nftpol_testbed::netns::require(&[]);
    let loaded = nftpol::source::manifest::load_values("bench", objects(true))?;
    let state: ClusterState = loaded.state;
    let mut bed = Testbed::new(Mode::Routed, &state)?;
    let ip: IpAddr = RESOLVER.parse().unwrap();
    let sock = bed
        .pod_netns(&ObjectKey::new("x", "dns"))?
        .run(move || UdpSocket::bind(SocketAddr::new(ip, 53)))??;
    std::thread::spawn(move || serve(sock));

    bed.apply_objects(&objects(true))?;
    let (none, held) = round_trips(&bed);
    // 1,000 more addresses in the rule's set, learned the way the reader learns them.
    let filler: Vec<Learned> = (0..1000u32)
        .map(|i| Learned {
            set: SET.to_string(),
            addr: IpAddr::V4(Ipv4Addr::from(0xC633_0000 + i)),
            timeout: Duration::from_secs(3600),
        })
        .collect();
    bed.node()
        .run(move || LearnSocket::open()?.learn(&filler))??;
    let (none2, full) = round_trips(&bed);

    println!("DNS round trip over UDP, {QUERIES} queries each, in turns (routed testbed node):");
    for (what, base, v) in [
        ("no policy", none.clone(), none.clone()),
        ("domainNames hold", none, held),
        ("no policy", none2.clone(), none2.clone()),
        ("hold, 1,000 learned", none2, full),
    ] {
        let (mut base, mut v) = (base, v);
        let base50 = pct(&mut base, 0.5);
        let base99 = pct(&mut base, 0.99);
        let p50 = pct(&mut v, 0.5);
        let p99 = pct(&mut v, 0.99);
        println!(
            "  {what:<22} p50 {:>8.1} µs  p99 {:>8.1} µs  added p50 {:>7.1} µs  added p99 {:>7.1} µs  p99 ratio {:.2}",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            (p50.as_secs_f64() - base50.as_secs_f64()) * 1e6,
            (p99.as_secs_f64() - base99.as_secs_f64()) * 1e6,
            p99.as_secs_f64() / base99.as_secs_f64(),
        );
    }
    let (_, metrics) = bed.http_get(9964, "/metrics")?;
    for l in metrics.lines().filter(|l| l.starts_with("nftpol_dns_")) {
        if !l.contains("bucket") {
            println!("  {l}");
        }
    }
    Ok(())
}
