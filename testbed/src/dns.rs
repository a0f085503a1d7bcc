//! A small authoritative DNS server for tests and benches of `domainNames` rules: it answers
//! each question from a zone function (A records and CNAME chains), over UDP and over TCP
//! (length-prefixed, the reply in one segment).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};

use simple_dns::rdata::{A, CNAME, RData};
use simple_dns::{CLASS, Name, Packet, ResourceRecord};

/// What the zone holds for one name.
#[derive(Clone, Debug)]
pub enum Record {
    A(Ipv4Addr),
    /// An alias: the answer goes on with the target's records.
    Cname(String),
}

/// The reply to `query`: the records `zone` gives for the question's name, following CNAMEs
/// (at most 4), each with its TTL. `None` for a query that does not parse.
pub fn reply(query: &[u8], zone: &dyn Fn(&str) -> Option<(Record, u32)>) -> Option<Vec<u8>> {
    let q = Packet::parse(query).ok()?;
    let question = q.questions.first()?.clone();
    let mut r = q.into_reply();
    let mut name = nftpol::policy::domain::normalize(&question.qname.to_string());
    for _ in 0..4 {
        let Some((record, ttl)) = zone(&name) else {
            break;
        };
        let owner = Name::new_unchecked(&name).into_owned();
        match record {
            Record::Cname(target) => {
                r.answers.push(ResourceRecord::new(
                    owner,
                    CLASS::IN,
                    ttl,
                    RData::CNAME(CNAME(Name::new_unchecked(&target).into_owned())),
                ));
                name = target;
            }
            Record::A(addr) => {
                r.answers.push(ResourceRecord::new(
                    owner,
                    CLASS::IN,
                    ttl,
                    RData::A(A {
                        address: addr.into(),
                    }),
                ));
                break;
            }
        }
    }
    r.questions = vec![question];
    r.build_bytes_vec().ok()
}

/// Answers queries on `sock` until it fails.
pub fn serve_udp(sock: UdpSocket, zone: impl Fn(&str) -> Option<(Record, u32)>) {
    let mut buf = [0u8; 1500];
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        if let Some(out) = reply(&buf[..n], &zone) {
            let _ = sock.send_to(&out, from);
        }
    }
}

/// Answers one query per connection accepted on `listener`, until it fails.
pub fn serve_tcp(listener: TcpListener, zone: impl Fn(&str) -> Option<(Record, u32)>) {
    for mut s in listener.incoming().flatten() {
        let mut len = [0u8; 2];
        if s.read_exact(&mut len).is_err() {
            continue;
        }
        let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if s.read_exact(&mut q).is_err() {
            continue;
        }
        if let Some(out) = reply(&q, &zone) {
            // One segment: length and message in one write.
            let mut framed = (out.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&out);
            let _ = s.write_all(&framed);
        }
    }
}
