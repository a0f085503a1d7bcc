//! Hand-built SCTP INIT packets over raw sockets, for kernels without SCTP support.
//!
//! With `CONFIG_IP_SCTP` off there are no SCTP sockets, yet raw sockets of protocol 132 send and
//! receive SCTP packets, and conntrack and nft `sctp dport` handle them. A probe is one INIT
//! chunk (RFC 9260 3.3.2) with a unique initiate tag: the path allows SCTP when that INIT
//! reaches the destination pod. The checksum is a real CRC32c, as conntrack checks it and
//! would mark a packet with a bad one invalid.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrStorage, sendto, socket,
};

const CHUNK_INIT: u8 = 1;
const COMMON_HEADER: usize = 12;
const INIT_LEN: usize = 20;

/// The fields of an INIT chunk that a probe uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Init {
    pub src_port: u16,
    pub dst_port: u16,
    pub initiate_tag: u32,
}

/// CRC32c (Castagnoli), reflected, as SCTP uses it.
pub fn crc32c(data: &[u8]) -> u32 {
    const fn table() -> [u32; 256] {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0x82f6_3b78 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    }
    static TABLE: [u32; 256] = table();
    !data.iter().fold(!0u32, |crc, &b| {
        TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// An SCTP packet holding one INIT chunk (common header included, no IP header).
pub fn build_init(init: Init) -> Vec<u8> {
    let mut p = Vec::with_capacity(COMMON_HEADER + INIT_LEN);
    p.extend_from_slice(&init.src_port.to_be_bytes());
    p.extend_from_slice(&init.dst_port.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // verification tag: 0 in an INIT
    p.extend_from_slice(&0u32.to_be_bytes()); // checksum, filled below
    p.push(CHUNK_INIT);
    p.push(0); // flags
    p.extend_from_slice(&(INIT_LEN as u16).to_be_bytes());
    p.extend_from_slice(&init.initiate_tag.to_be_bytes());
    p.extend_from_slice(&65535u32.to_be_bytes()); // a_rwnd
    p.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&init.initiate_tag.to_be_bytes()); // initial TSN
    // The CRC32c goes on the wire least significant byte first (RFC 9260 appendix A).
    let crc = crc32c(&p);
    p[8..12].copy_from_slice(&crc.to_le_bytes());
    p
}

/// Parses an SCTP packet (no IP header) whose first chunk is an INIT with a valid checksum.
pub fn parse_init(p: &[u8]) -> Option<Init> {
    if p.len() < COMMON_HEADER + INIT_LEN || p[COMMON_HEADER] != CHUNK_INIT {
        return None;
    }
    let mut copy = p.to_vec();
    copy[8..12].fill(0);
    if crc32c(&copy).to_le_bytes() != p[8..12] {
        return None;
    }
    let be16 = |i: usize| u16::from_be_bytes([p[i], p[i + 1]]);
    let be32 = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
    Some(Init {
        src_port: be16(0),
        dst_port: be16(2),
        initiate_tag: be32(COMMON_HEADER + 4),
    })
}

/// A nonblocking raw SCTP socket of the caller's network namespace.
pub fn raw_socket(v4: bool) -> io::Result<OwnedFd> {
    let family = if v4 {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    Ok(socket(
        family,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::Sctp,
    )?)
}

/// Sends `packet` to `dst` over a raw SCTP socket of the matching family. The port of the
/// socket address must be 0 for IPv6 raw sockets (it would be read as a protocol number).
pub fn send(fd: &OwnedFd, dst: IpAddr, packet: &[u8]) -> io::Result<()> {
    let addr = SockaddrStorage::from(SocketAddr::new(dst, 0));
    sendto(fd.as_raw_fd(), packet, &addr, MsgFlags::MSG_DONTWAIT)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn init_round_trips_and_bad_checksums_are_rejected() {
        let init = Init {
            src_port: 40000,
            dst_port: 80,
            initiate_tag: 0xdead_beef,
        };
        let mut p = build_init(init);
        assert_eq!(p.len(), 32);
        assert_eq!(parse_init(&p), Some(init));
        p[20] ^= 1;
        assert_eq!(parse_init(&p), None);
    }
}
