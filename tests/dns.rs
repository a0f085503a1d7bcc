//! `domainNames` on the real kernel, each case in its own network namespace (run as root): the
//! ruleset with learned-address sets and the DNS hold lists as rendered and checks clean, and
//! learned elements survive reconciles and are no drift.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use nftpol::dataplane::dns::{LearnSocket, Learned, learned_set_name};
use nftpol::dataplane::{Dataplane, Options, Ruleset, render};
use nftpol::policy::compile::{NodePlan, Scope, compile};
use nftpol::policy::index::ClusterIndex;
use serde_json::{Value, json};
use support::{Netns, normalize};

fn plan(extra_pods: &[(&str, &str)]) -> NodePlan {
    let ns = |n: &str| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}});
    let pod = |n: &str, name: &str, ips: &[&str]| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": n, "labels": {"app": name}},
               "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
               "status": {"phase": "Running", "podIP": ips[0],
                          "podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>()}})
    };
    let sel = |n: &str| json!({"matchLabels": {"kubernetes.io/metadata.name": n}});
    let mut docs: Vec<Value> = vec![
        ns("shop"),
        pod("shop", "web", &["10.1.0.5", "fd00::5"]),
        json!({"apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy",
               "metadata": {"name": "egress"},
               "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": sel("shop")},
                        "egress": [
                            {"name": "apis", "action": "Accept",
                             "to": [{"domainNames": ["api.example.com", "*.cdn.example"]}],
                             "protocols": [{"tcp": {"destinationPort": {"number": 443}}},
                                           {"tcp": {"destinationPort": {"range": {"start": 8000, "end": 8080}}}}]},
                            {"name": "any", "action": "Accept", "to": [{"domainNames": ["any.example"]}]},
                            {"action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]}]}}),
    ];
    for (name, ip) in extra_pods {
        docs.push(pod("shop", name, &[ip]));
    }
    let loaded = nftpol::source::manifest::load_values("dns", docs).expect("loads");
    assert!(loaded.invalid.is_empty(), "{:?}", loaded.invalid);
    compile(
        &ClusterIndex::from_state(&loaded.state),
        &Scope::Node("n1".into()),
    )
}

fn options() -> Options {
    Options {
        dns_queue: Some(7153),
        ..Options::default()
    }
}

#[test]
fn domain_rules_list_as_rendered_and_learned_elements_are_no_drift() {
    nftpol_testbed::netns::require(&["nft"]);
    let rs = Ruleset::build(&plan(&[]), options());
    let rendered = render(&rs);
    for line in [
        "ip daddr @dnspods_v4 udp sport 53 queue num 7153 bypass",
        "ip6 daddr @dnspods_v6 tcp sport 53 queue num 7153 bypass",
        "ip daddr @d4/c/egress/e0 tcp dport 443 return",
        "ip daddr @d4/c/egress/e0 tcp dport 8000-8080 return",
        "ip6 daddr @d6/c/egress/e1 return",
        // The second domainNames rule leaves to the first what it matches (here: nothing
        // static, so the guard sets are empty but there).
        "ip6 daddr . meta l4proto . th dport != @cae6gt/",
        "ip6 daddr != @cae6go/",
        "flags timeout",
    ] {
        assert!(rendered.contains(line), "{line} not in\n{rendered}");
    }
    let ns = Netns::new();
    let rs2 = rs.clone();
    let next = Ruleset::build(&plan(&[("api", "10.1.0.9")]), options());
    let next2 = next.clone();
    let listed = ns.run(move || {
        let mut dp = Dataplane::new().expect("dataplane");
        dp.apply_full(&rs2).expect("apply_full");
        assert_eq!(dp.check_drift().unwrap(), None);
        let learn = LearnSocket::open().unwrap();
        let set = learned_set_name("c/egress/e0", nftpol::dataplane::ruleset::Family::V4);
        let addr: IpAddr = "192.0.2.1".parse().unwrap();
        let l = Learned {
            set: set.clone(),
            addr,
            timeout: Duration::from_secs(300),
        };
        learn.learn(std::slice::from_ref(&l)).expect("learn");
        // Again: the timeout is renewed, no EEXIST.
        learn.learn(&[l]).expect("learn again");
        assert_eq!(
            dp.check_drift().unwrap(),
            None,
            "learned elements are no drift"
        );
        // A reconcile (a new subject pod) keeps what was learned.
        let report = dp.apply(&next2).expect("diff");
        assert_eq!(report.kind, nftpol::dataplane::ApplyKind::Diff);
        assert_eq!(dp.check_drift().unwrap(), None);
        dp.last_applied().cloned()
    });
    assert_eq!(listed.as_ref(), Some(&next));
    let text = ns.exec(&["nft", "list", "set", "inet", "nftpol", "d4/c/egress/e0"]);
    assert!(text.contains("192.0.2.1 timeout 5m"), "{text}");
    // With the learned element left out, the kernel lists what render says.
    let listing = ns.list_table();
    let without: String = listing
        .lines()
        .filter(|l| !l.contains("192.0.2.1"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(normalize(&without), normalize(&render(&next)));
}

// --- Real packets on a testbed node running `nftpol run` --------------------------------------

mod bed {
    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
    use std::time::{Duration, Instant};

    use nftpol::policy::model::{ClusterState, ObjectKey, Protocol};
    use nftpol_testbed::dns::{self, Record};
    use nftpol_testbed::{Mode, NODE_NAME, Testbed, netns::Netns};
    use serde_json::{Value, json};
    use simple_dns::rdata::RData;
    use simple_dns::{CLASS, Name, Packet};

    pub const CLIENT: (&str, &str, &str) = ("x", "client", "10.244.1.2");
    pub const RESOLVER: (&str, &str, &str) = ("x", "dns", "10.244.1.3");
    pub const BYSTANDER: (&str, &str, &str) = ("x", "bystander", "10.244.1.4");
    pub const API: (&str, &str, &str) = ("y", "api", "10.244.2.4");
    pub const CDN: (&str, &str, &str) = ("y", "cdn", "10.244.2.5");
    pub const EVIL: (&str, &str, &str) = ("y", "evil", "10.244.2.6");
    pub const LATE: (&str, &str, &str) = ("y", "late", "10.244.2.7");
    /// A resolver on the node's host network, as NodeLocal DNSCache has it.
    pub const NODELOCAL: &str = "169.254.20.10";
    /// The port of the echo server on LATE (the TTL expiry case).
    pub const ECHO: u16 = 9000;

    /// What the test's DNS server answers: name -> (CNAME target, or the address, and TTL).
    pub fn zone() -> BTreeMap<&'static str, (Option<&'static str>, &'static str, u32)> {
        BTreeMap::from([
            ("api.example.com", (None, API.2, 300)),
            (
                "www.cdn.example",
                (Some("edge.cdnprovider.net"), CDN.2, 300),
            ),
            ("edge.cdnprovider.net", (None, CDN.2, 300)),
            ("cdn.example", (None, CDN.2, 300)),
            ("not-in-the-rule.example", (None, EVIL.2, 300)),
            ("evil.example", (None, EVIL.2, 300)),
            ("short.cdn.example", (None, LATE.2, 2)),
            ("late.example", (None, LATE.2, 300)),
        ])
    }

    fn pod((ns, name, ip): (&str, &str, &str), role: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": ns, "labels": {"app": name, "role": role}},
               "spec": {"nodeName": NODE_NAME, "containers": [{"name": "c", "ports": [{"containerPort": 80}]}]},
               "status": {"phase": "Running", "podIP": ip}})
    }

    pub fn objects() -> Vec<Value> {
        let ns =
            |n: &str| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}});
        let dns_peer = json!([{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "dns"}}}}]);
        let dns_ports = json!([{"udp": {"destinationPort": {"number": 53}}},
                               {"tcp": {"destinationPort": {"number": 53}}}]);
        vec![
            ns("x"),
            ns("y"),
            pod(CLIENT, "client"),
            pod(RESOLVER, "dns"),
            pod(BYSTANDER, "bystander"),
            pod(API, "server"),
            pod(CDN, "server"),
            pod(EVIL, "server"),
            pod(LATE, "server"),
            json!({"apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy",
                   "metadata": {"name": "client-egress"},
                   "spec": {"tier": "Admin", "priority": 10,
                            "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "client"}}}},
                            "egress": [
                                {"name": "dns", "action": "Accept", "to": dns_peer, "protocols": dns_ports},
                                {"name": "apis", "action": "Accept",
                                 "to": [{"domainNames": ["api.example.com", "*.cdn.example"]}],
                                 "protocols": [{"tcp": {"destinationPort": {"number": 80}}},
                                               {"tcp": {"destinationPort": {"number": ECHO}}}]},
                                {"name": "nodelocal", "action": "Accept", "to": [{"networks": [format!("{NODELOCAL}/32")]}],
                                 "protocols": dns_ports},
                                {"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]}}),
            json!({"apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy",
                   "metadata": {"name": "bystander-egress"},
                   "spec": {"tier": "Admin", "priority": 20,
                            "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "bystander"}}}},
                            "egress": [
                                {"name": "dns", "action": "Accept", "to": dns_peer, "protocols": dns_ports},
                                // Before the domainNames rule, so it decides first: LATE's port 80.
                                {"name": "not-late-80", "action": "Deny", "to": [{"networks": [format!("{}/32", LATE.2)]}],
                                 "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]},
                                {"name": "evil", "action": "Accept", "to": [{"domainNames": ["evil.example", "late.example"]}]},
                                {"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]}}),
        ]
    }

    pub fn key(p: (&str, &str, &str)) -> ObjectKey {
        ObjectKey::new(p.0, p.1)
    }

    /// The testbed with the policies applied, the DNS server (UDP and TCP) on RESOLVER and an
    /// echo server on LATE.
    pub fn start(mode: Mode, daemon_args: &[&str]) -> Testbed {
        nftpol_testbed::netns::require(&[]);
        let loaded = nftpol::source::manifest::load_values("dns", objects()).expect("loads");
        assert!(loaded.invalid.is_empty(), "{:?}", loaded.invalid);
        let state: ClusterState = loaded.state;
        let mut bed = Testbed::new(mode, &state).expect("testbed");
        bed.set_daemon_args(daemon_args.iter().map(|s| s.to_string()).collect());
        for p in [API, CDN, EVIL, LATE] {
            bed.listen(&key(p), 80, Protocol::Tcp).expect("listen");
        }
        let ip: IpAddr = RESOLVER.2.parse().unwrap();
        let udp = bed
            .pod_netns(&key(RESOLVER))
            .unwrap()
            .run(move || UdpSocket::bind(SocketAddr::new(ip, 53)))
            .unwrap()
            .expect("bind DNS/UDP");
        let tcp = bed
            .pod_netns(&key(RESOLVER))
            .unwrap()
            .run(move || TcpListener::bind(SocketAddr::new(ip, 53)))
            .unwrap()
            .expect("bind DNS/TCP");
        std::thread::spawn(move || serve_udp(udp));
        std::thread::spawn(move || serve_tcp(tcp));
        let late: IpAddr = LATE.2.parse().unwrap();
        let echo = bed
            .pod_netns(&key(LATE))
            .unwrap()
            .run(move || TcpListener::bind(SocketAddr::new(late, ECHO)))
            .unwrap()
            .expect("bind echo");
        std::thread::spawn(move || {
            for mut s in echo.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 512];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        bed.apply_objects(&objects()).expect("apply");
        bed
    }

    /// The test zone as `nftpol_testbed::dns` serves it.
    fn lookup(name: &str) -> Option<(Record, u32)> {
        let (cname, addr, ttl) = zone().get(name).copied()?;
        let record = match cname {
            Some(target) => Record::Cname(target.to_string()),
            None => Record::A(addr.parse().ok()?),
        };
        Some((record, ttl))
    }

    fn serve_udp(sock: UdpSocket) {
        dns::serve_udp(sock, lookup);
    }

    fn serve_tcp(l: TcpListener) {
        dns::serve_tcp(l, lookup);
    }

    fn query(name: &str, id: u16) -> Vec<u8> {
        let mut p = Packet::new_query(id);
        p.questions.push(simple_dns::Question::new(
            Name::new_unchecked(name),
            simple_dns::QTYPE::TYPE(simple_dns::TYPE::A),
            simple_dns::QCLASS::CLASS(CLASS::IN),
            false,
        ));
        p.build_bytes_vec().unwrap()
    }

    fn addresses(answer: &[u8]) -> Vec<IpAddr> {
        let Ok(p) = Packet::parse(answer) else {
            return Vec::new();
        };
        p.answers
            .iter()
            .filter_map(|rr| match &rr.rdata {
                RData::A(a) => Some(IpAddr::V4(Ipv4Addr::from(a.address))),
                _ => None,
            })
            .collect()
    }

    /// A DNS server (UDP) on the node's host network at [`NODELOCAL`].
    pub fn start_nodelocal(bed: &Testbed) {
        let node = bed.node();
        // NodeLocal DNSCache puts it on a dummy link; `lo` serves the same (a local address)
        // on kernels without the dummy driver.
        node.ip(&["link", "set", "lo", "up"]).expect("lo up");
        node.ip(&["addr", "add", &format!("{NODELOCAL}/32"), "dev", "lo"])
            .expect("address");
        let ip: IpAddr = NODELOCAL.parse().unwrap();
        let udp = node
            .run(move || UdpSocket::bind(SocketAddr::new(ip, 53)))
            .unwrap()
            .expect("bind node-local DNS");
        std::thread::spawn(move || serve_udp(udp));
    }

    /// Resolves `name` from inside the calling thread's namespace (UDP, or TCP).
    pub fn resolve(name: &str, tcp: bool) -> Vec<IpAddr> {
        resolve_at(RESOLVER.2, name, tcp)
    }

    /// Resolves `name` with the server at `server`.
    pub fn resolve_at(server: &str, name: &str, tcp: bool) -> Vec<IpAddr> {
        let server = SocketAddr::new(server.parse().unwrap(), 53);
        let q = query(name, 7);
        if tcp {
            let Ok(mut s) = TcpStream::connect_timeout(&server, Duration::from_secs(2)) else {
                return Vec::new();
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut framed = (q.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&q);
            if s.write_all(&framed).is_err() {
                return Vec::new();
            }
            let mut len = [0u8; 2];
            if s.read_exact(&mut len).is_err() {
                return Vec::new();
            }
            let mut a = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if s.read_exact(&mut a).is_err() {
                return Vec::new();
            }
            return addresses(&a);
        }
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(&q, server).unwrap();
        let mut buf = [0u8; 1500];
        match s.recv(&mut buf) {
            Ok(n) => addresses(&buf[..n]),
            Err(_) => Vec::new(),
        }
    }

    /// Resolves `name` in `ns` and connects to its first address on `port`: (addresses,
    /// connected).
    pub fn resolve_connect(ns: &Netns, name: &str, port: u16, tcp: bool) -> (Vec<IpAddr>, bool) {
        let name = name.to_string();
        ns.run(move || {
            let addrs = resolve(&name, tcp);
            let ok = addrs.first().is_some_and(|a| {
                TcpStream::connect_timeout(&SocketAddr::new(*a, port), Duration::from_millis(700))
                    .is_ok()
            });
            (addrs, ok)
        })
        .expect("in the pod namespace")
    }

    pub fn connects(ns: &Netns, ip: &str, port: u16) -> bool {
        ns.tcp_connects(
            SocketAddr::new(ip.parse().unwrap(), port),
            Duration::from_millis(700),
        )
    }

    /// Empties a learned set in the node's table, so that the next answer is a first one.
    pub fn forget(bed: &Testbed, set: &str) {
        bed.node()
            .exec("nft", &["flush", "set", "inet", "nftpol", set], None)
            .expect("nft flush set");
    }

    pub fn poll(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

const CLIENT_SET: &str = "d4/c/client-egress/e1";

/// Resolve, then connect at once, 1,000 times, each time with the learned set emptied first:
/// not one first connection fails. Then the semantics: exact and wildcard names, a CNAME chain,
/// DNS over TCP, a name not in the rule, the suffix itself, and answers to another pod.
#[test]
fn resolve_then_connect_never_drops_a_first_connection() {
    use nftpol_testbed::Mode;
    for (mode, rounds) in [(Mode::Routed, 1000), (Mode::Bridge, 200)] {
        let bed = bed::start(mode, &[]);
        let client = bed.pod_netns(&bed::key(bed::CLIENT)).unwrap();
        // Before any answer: denied.
        assert!(
            !bed::connects(client, bed::API.2, 80),
            "{mode}: before resolving"
        );
        let mut failed = 0;
        for _ in 0..rounds {
            bed::forget(&bed, CLIENT_SET);
            let (addrs, ok) = bed::resolve_connect(client, "api.example.com", 80, false);
            assert_eq!(
                addrs,
                [bed::API.2.parse::<IpAddr>().unwrap()],
                "{mode}: DNS works"
            );
            if !ok {
                failed += 1;
            }
        }
        eprintln!(
            "{mode}: {rounds} resolve-then-connect rounds, {failed} failed first connections"
        );
        assert_eq!(
            failed,
            0,
            "{mode}: first connections dropped\n{}",
            bed.daemon_log()
        );

        // Wildcard through a CNAME chain, over TCP too.
        bed::forget(&bed, CLIENT_SET);
        let (addrs, ok) = bed::resolve_connect(client, "WWW.cdn.example.", 80, false);
        assert_eq!(addrs, [bed::CDN.2.parse::<IpAddr>().unwrap()]);
        assert!(ok, "{mode}: wildcard name through a CNAME");
        bed::forget(&bed, CLIENT_SET);
        let (_, ok) = bed::resolve_connect(client, "api.example.com", 80, true);
        assert!(ok, "{mode}: DNS over TCP");
        // The suffix itself and a name not in the rule: resolved, still denied.
        bed::forget(&bed, CLIENT_SET);
        let (addrs, ok) = bed::resolve_connect(client, "cdn.example", 80, false);
        assert!(
            !addrs.is_empty() && !ok,
            "{mode}: *.cdn.example matched cdn.example"
        );
        let (addrs, ok) = bed::resolve_connect(client, "not-in-the-rule.example", 80, false);
        assert!(
            !addrs.is_empty() && !ok,
            "{mode}: a name not in the rule opened"
        );
        // Answers to another pod (with its own domain rule) do not open this one.
        let bystander = bed.pod_netns(&bed::key(bed::BYSTANDER)).unwrap();
        let (_, ok) = bed::resolve_connect(bystander, "evil.example", 80, false);
        assert!(ok, "{mode}: the bystander's own rule");
        assert!(
            !bed::connects(client, bed::EVIL.2, 80),
            "{mode}: another pod's answer opened this pod"
        );
        let (_, ok) = bed::resolve_connect(bystander, "api.example.com", 80, false);
        assert!(!ok, "{mode}: the bystander has no rule for api.example.com");
        assert!(
            !bed::connects(client, bed::API.2, 80),
            "{mode}: the bystander's answer opened the client"
        );
        // `explain --dns-from` reads the daemon's learned names and counts them in the verdict.
        let bin = nftpol_testbed::daemon::find_binary().expect("nftpol binary");
        let dir = bed.manifests_dir().to_str().unwrap().to_string();
        let explain = |to: &str| {
            bed.node()
                .exec(
                    bin.to_str().unwrap(),
                    &[
                        "explain",
                        "-f",
                        &dir,
                        "--from",
                        "x/client",
                        "--to",
                        to,
                        "--port",
                        "80",
                        "--dns-from",
                        "127.0.0.1:9964",
                    ],
                    None,
                )
                .expect("explain")
        };
        let _ = bed::resolve_connect(client, "api.example.com", 80, false);
        let text = explain(bed::API.2);
        assert!(
            text.contains("is learned for api.example.com (rule Admin:c/client-egress/e1 apis"),
            "{text}"
        );
        assert!(
            text.contains("apis") && text.to_lowercase().contains("allowed"),
            "{text}"
        );
        // Learned for the bystander's rule: named, and the client is still denied.
        let text = explain(bed::EVIL.2);
        assert!(
            text.contains("DENIED") && text.contains("rule Admin:c/bystander-egress/e2 evil"),
            "{text}"
        );
        let text = explain(bed::LATE.2);
        assert!(text.contains("no name learned"), "{text}");
        // The port is the rule's: 81 stays closed.
        let (_, ok) = bed::resolve_connect(client, "api.example.com", 81, false);
        assert!(!ok, "{mode}: a port not in the rule");
        let (_, text) = bed.http_get(9964, "/metrics").expect("metrics");
        let sample = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} not in\n{text}"))
        };
        assert!(sample("nftpol_dns_answers_held ") >= rounds as f64);
        assert!(sample("nftpol_dns_addresses_learned ") >= rounds as f64);
        assert!(text.contains("nftpol_dns_hold_seconds_bucket"), "{text}");
        // An earlier rule of the tier decides first, also for a learned address: the
        // bystander's Deny of LATE:80 stands, LATE's other port is the domainNames rule's.
        let (addrs, ok) = bed::resolve_connect(bystander, "late.example", 80, false);
        assert!(
            !addrs.is_empty() && !ok,
            "{mode}: a learned address overrode an earlier Deny"
        );
        let (_, ok) = bed::resolve_connect(bystander, "late.example", bed::ECHO, false);
        assert!(
            ok,
            "{mode}: the learned address on a port the Deny leaves alone"
        );
    }
}

/// An address learned with a short TTL: new connections stop once it expires, an open one
/// keeps working.
#[test]
fn ttl_expiry_stops_new_connections_and_keeps_open_ones() {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    let bed = bed::start(
        nftpol_testbed::Mode::Routed,
        &["--dns-min-ttl", "1", "--dns-max-ttl", "3600"],
    );
    let client = bed.pod_netns(&bed::key(bed::CLIENT)).unwrap();
    let late = SocketAddr::new(bed::LATE.2.parse().unwrap(), bed::ECHO);
    let mut open = client
        .run(move || {
            assert_eq!(bed::resolve("short.cdn.example", false), [late.ip()]);
            TcpStream::connect_timeout(&late, Duration::from_millis(700))
        })
        .unwrap()
        .expect("connects while the TTL lasts");
    // Expired (2 s TTL): a new connection is refused, polled with a deadline.
    assert!(
        bed::poll(Duration::from_secs(20), || !bed::connects(
            client,
            bed::LATE.2,
            bed::ECHO
        )),
        "new connections still allowed after the TTL"
    );
    open.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    open.write_all(b"still here").unwrap();
    let mut buf = [0u8; 10];
    open.read_exact(&mut buf)
        .expect("the open connection keeps working");
    assert_eq!(&buf, b"still here");
}

/// The hold is in the ruleset but nothing reads the queue: answers pass (DNS keeps working)
/// and the domain rule learns nothing, so its connections fail closed.
#[test]
fn without_a_reader_dns_works_and_connections_fail_closed() {
    let bed = bed::start(nftpol_testbed::Mode::Routed, &["--dns-no-reader"]);
    let client = bed.pod_netns(&bed::key(bed::CLIENT)).unwrap();
    for tcp in [false, true] {
        let (addrs, ok) = bed::resolve_connect(client, "api.example.com", 80, tcp);
        assert_eq!(
            addrs,
            [bed::API.2.parse::<IpAddr>().unwrap()],
            "tcp={tcp}: DNS works"
        );
        assert!(!ok, "tcp={tcp}: connected without a learned address");
    }
}

/// A resolver on the node's host network (NodeLocal DNSCache's 169.254.20.10): its answers
/// leave through the output hook, where they are held too.
#[test]
fn a_resolver_on_the_host_network_is_held_too() {
    use std::net::{SocketAddr, TcpStream};
    let bed = bed::start(nftpol_testbed::Mode::Routed, &[]);
    bed::start_nodelocal(&bed);
    let client = bed.pod_netns(&bed::key(bed::CLIENT)).unwrap();
    let api = SocketAddr::new(bed::API.2.parse().unwrap(), 80);
    let mut failed = 0;
    for _ in 0..100 {
        bed::forget(&bed, CLIENT_SET);
        let ok = client
            .run(move || {
                assert_eq!(
                    bed::resolve_at(bed::NODELOCAL, "api.example.com", false),
                    [api.ip()]
                );
                TcpStream::connect_timeout(&api, Duration::from_millis(700)).is_ok()
            })
            .unwrap();
        if !ok {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "first connections dropped\n{}", bed.daemon_log());
    // The flow log of such a connection names the rule and the name.
    assert!(
        bed::poll(Duration::from_secs(10), || {
            bed
            .daemon_log()
            .contains("domainNames egress rule: learned for api.example.com (rule Admin:c/client-egress/e1 apis")
        }),
        "no flow log line naming the name:\n{}",
        bed.daemon_log()
    );
}

/// The start-up probe of the NFQUEUE target: true on this kernel, and it leaves a programmed
/// table exactly as it was.
#[test]
fn the_queue_target_probe_changes_nothing() {
    nftpol_testbed::netns::require(&["nft"]);
    let ns = Netns::new();
    let rs = Ruleset::build(&plan(&[]), options());
    let drift = ns.run(move || {
        assert!(nftpol::dataplane::dns::queue_target_supported(7153).expect("probe"));
        let mut dp = Dataplane::new().expect("dataplane");
        dp.apply_full(&rs).expect("apply_full");
        assert!(nftpol::dataplane::dns::queue_target_supported(7153).expect("probe"));
        dp.check_drift().expect("drift check")
    });
    assert_eq!(drift, None);
    assert!(!ns.list_table().contains("dnsprobe"));
}

/// With flow logs on, a learned-address rule logs its allows with a prefix naming the rule, and
/// the kernel lists it as rendered.
#[test]
fn learned_rules_log_with_the_rule_tag() {
    nftpol_testbed::netns::require(&["nft"]);
    let rs = Ruleset::build(
        &plan(&[]),
        Options {
            nflog_group: Some(5),
            ..options()
        },
    );
    let rendered = render(&rs);
    let line = r#"ip daddr @d4/c/egress/e0 tcp dport 443 log prefix "nftpol allow egress Admin:c/egress/e0" group 5 return"#;
    assert!(rendered.contains(line), "{rendered}");
    let ns = Netns::new();
    let rs2 = rs.clone();
    let drift = ns.run(move || {
        let mut dp = Dataplane::new().expect("dataplane");
        dp.apply_full(&rs2).expect("apply_full");
        dp.check_drift().expect("drift check")
    });
    assert_eq!(drift, None);
    assert_eq!(ns.list_table(), rendered);
}
