//! The NFLOG reader against the real kernel, each test in its own network namespace (run as
//! root): packets an nftables `log group` rule matches arrive with their prefix, addresses,
//! protocol and ports, and a group has one reader at a time.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use nftpol::observe::nflog::{LoggedPacket, NflogError, NflogSocket, PacketInfo};
use support::Netns;

const GROUP: u16 = 100;
const PREFIX: &str = "nftpol test";

/// Fails the test unless it can run (root, iproute2, nft); never true: a test that cannot run
/// must not pass.
fn skip() -> bool {
    nftpol_testbed::netns::require(&["nft"]);
    false
}

/// Reads from `socket` until `done` holds for what arrived or `timeout` passes.
fn collect(
    socket: &mut NflogSocket,
    timeout: Duration,
    done: impl Fn(&[LoggedPacket]) -> bool,
) -> Vec<LoggedPacket> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        seen.extend(socket.recv(left).expect("recv"));
    }
    seen
}

#[test]
fn logged_packets_carry_prefix_addresses_protocol_and_ports() {
    if skip() {
        return;
    }
    let ns = Netns::new();
    ns.exec(&["ip", "link", "set", "lo", "up"]);
    // One `nft` argument holds the whole script: the test helper passes no standard input.
    ns.exec(&[
        "nft",
        &format!(
            "add table inet t; \
             add chain inet t out {{ type filter hook output priority 0; }}; \
             add rule inet t out udp dport 9999 log prefix \"{PREFIX}\" group {GROUP}; \
             add rule inet t out meta nfproto ipv6 tcp dport 9998 log prefix \"{PREFIX}\" group {GROUP}"
        ),
    ]);
    let mut socket = ns.run(|| NflogSocket::bind(GROUP)).expect("bind");

    let udp_src = ns.run(|| {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("udp bind");
        udp.send_to(b"hello", "127.0.0.1:9999").expect("udp send");
        udp.local_addr().expect("local addr")
    });
    // Nothing listens: the SYN is logged on its way out and answered with a reset.
    ns.run(|| {
        let dst = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 9998);
        assert!(TcpStream::connect_timeout(&dst, Duration::from_secs(2)).is_err());
    });

    let is_tcp = |p: &LoggedPacket| p.packet.protocol == 6;
    let seen = collect(&mut socket, Duration::from_secs(5), |seen| {
        seen.iter().any(|p| p.packet.protocol == 17) && seen.iter().any(is_tcp)
    });

    let udp = seen
        .iter()
        .find(|p| p.packet.protocol == 17)
        .unwrap_or_else(|| panic!("no UDP packet logged: {seen:?}"));
    assert_eq!(
        udp,
        &LoggedPacket {
            prefix: PREFIX.into(),
            packet: PacketInfo {
                src: IpAddr::V4(Ipv4Addr::LOCALHOST),
                dst: IpAddr::V4(Ipv4Addr::LOCALHOST),
                protocol: 17,
                src_port: Some(udp_src.port()),
                dst_port: Some(9999),
            },
        }
    );
    let tcp = seen
        .iter()
        .find(|p| is_tcp(p))
        .unwrap_or_else(|| panic!("no TCP packet logged: {seen:?}"));
    assert_eq!(tcp.prefix, PREFIX);
    assert_eq!(tcp.packet.src, IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_eq!(tcp.packet.dst, IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_eq!(tcp.packet.dst_port, Some(9998));
    assert!(tcp.packet.src_port.is_some_and(|p| p != 0), "{tcp:?}");
    assert_eq!(socket.unparsed(), 0);
    assert_eq!(socket.overruns(), 0);
}

#[test]
fn a_group_has_one_reader_and_is_free_again_once_it_closes() {
    if skip() {
        return;
    }
    let ns = Netns::new();
    ns.run(|| {
        let first = NflogSocket::bind(GROUP).expect("first bind");
        match NflogSocket::bind(GROUP) {
            Err(NflogError::AlreadyBound { group }) => assert_eq!(group, GROUP),
            other => panic!("second bind: {other:?}"),
        }
        // Another group is independent.
        let _other = NflogSocket::bind(GROUP + 1).expect("other group");
        drop(first);
        // Closing unbinds, but only once no process holds the socket: a child another test is
        // forking at that moment holds a copy of our descriptors until it execs.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match NflogSocket::bind(GROUP) {
                Ok(_) => break,
                Err(NflogError::AlreadyBound { .. }) if Instant::now() < deadline => {
                    std::thread::yield_now()
                }
                Err(e) => panic!("bind after the first reader closed: {e}"),
            }
        }
    });
}

#[test]
fn recv_times_out_empty_when_nothing_is_logged() {
    if skip() {
        return;
    }
    let ns = Netns::new();
    let mut socket = ns.run(|| NflogSocket::bind(GROUP)).expect("bind");
    let start = Instant::now();
    assert_eq!(
        socket.recv(Duration::from_millis(50)).expect("recv"),
        vec![]
    );
    assert!(start.elapsed() >= Duration::from_millis(50));
}

#[test]
fn a_reader_that_falls_behind_counts_the_overrun_and_keeps_reading() {
    if skip() {
        return;
    }
    let ns = Netns::new();
    ns.exec(&[
        "nft",
        &format!(
            "add table inet t; \
             add chain inet t out {{ type filter hook output priority 0; }}; \
             add rule inet t out udp dport 9999 log group {GROUP}"
        ),
    ]);
    let mut socket = ns.run(|| NflogSocket::bind(GROUP)).expect("bind");
    // Far more log messages than the socket's receive buffer holds, none read meanwhile.
    let send = || {
        ns.run(|| {
            let udp = UdpSocket::bind("127.0.0.1:0").expect("udp bind");
            for _ in 0..5000 {
                udp.send_to(b"x", "127.0.0.1:9999").expect("udp send");
            }
        })
    };
    send();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut received = 0;
    while socket.overruns() == 0 && Instant::now() < deadline {
        received += socket.recv(Duration::from_millis(100)).expect("recv").len();
    }
    assert!(
        socket.overruns() >= 1,
        "no overrun after {received} packets"
    );
    assert!(received < 5000, "{received} packets, yet an overrun");

    // Reading goes on after the overrun.
    send();
    let seen = collect(&mut socket, Duration::from_secs(5), |seen| !seen.is_empty());
    assert!(!seen.is_empty());
    assert_eq!(seen[0].prefix, "");
    assert_eq!(seen[0].packet.dst_port, Some(9999));
}
