//! The DNS reader of `domainNames` rules: takes each DNS answer the kernel holds in the NFQUEUE
//! (`crate::dataplane::dns`), learns the addresses it carries for the names of the receiving
//! pod's rules, commits them, and only then lets the answer go. The client cannot connect
//! before its address is allowed: no first-connection drop.
//!
//! - The matching is pure ([`answer_learns`]): packet bytes and the current [`DnsPlan`] in, the
//!   addresses to add out. The queue and the netlink transaction are behind [`LearnSink`], so
//!   it is tested without root.
//! - An answer for a name none of the pod's rules has, or to a pod without such rules, passes
//!   untouched. A malformed, truncated or hostile one is accepted unparsed and counted: nothing
//!   is ever learned from it.
//! - CNAME chains: the A/AAAA records of the chain's last name count for the question's name,
//!   with the shortest TTL along the chain (clamped, [`TtlClamp`]).
//! - TCP: a segment holding whole length-prefixed messages is read; anything else (a message
//!   split over segments) passes unparsed.
//! - Every verdict is ACCEPT: the hold delays answers, it never drops one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use simple_dns::rdata::RData;

use crate::dataplane::dns::{DomainObjects, Learned, learned_set_name};
use crate::dataplane::ruleset::Family;
use crate::observe::metrics::DnsCounters;
use crate::policy::domain::{DomainMatcher, TtlClamp, normalize};

/// At most this many addresses are learned from one answer (the API asks for 100 per name).
pub const MAX_ADDRESSES_PER_ANSWER: usize = 512;
/// CNAME chains longer than this are not followed.
const MAX_CHAIN: usize = 16;

/// One `domainNames` rule of a pod, as the reader matches it.
#[derive(Clone, Debug)]
pub struct PlanRule {
    /// `cluster_rule_base`: names the rule's sets.
    pub base: String,
    /// How explain and logs name the rule (`Admin:c/name/e0 rule-label`).
    pub rule: String,
    pub matcher: DomainMatcher,
}

/// Which pods (by address) have which `domainNames` rules: from the last applied ruleset.
#[derive(Clone, Debug, Default)]
pub struct DnsPlan {
    pub by_pod: BTreeMap<IpAddr, Vec<PlanRule>>,
}

impl DnsPlan {
    pub fn from_objects(objects: &DomainObjects) -> Self {
        let mut by_pod: BTreeMap<IpAddr, Vec<PlanRule>> = BTreeMap::new();
        for (base, rule) in &objects.rules {
            let pr = PlanRule {
                base: base.clone(),
                rule: format!("{}:{} {}", rule.tier.as_str(), base, rule.label),
                matcher: DomainMatcher::new(&rule.names),
            };
            for ip in rule.pods.values().flatten() {
                by_pod.entry(*ip).or_default().push(pr.clone());
            }
        }
        DnsPlan { by_pod }
    }
}

/// What an answer teaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not a DNS answer for a pod rule's name (a TCP handshake, another pod, another name).
    Ignored,
    /// Could not be read as whole DNS messages: passed, nothing learned.
    Unparsed,
    /// Addresses to add, each with the name (as asked) it was learned for.
    Learn(Vec<(Learned, String, String)>),
}

/// The DNS messages of a held packet (an IP packet, as NFQUEUE gives it in an inet table), and
/// its destination. `None`: not readable.
fn messages(packet: &[u8]) -> Option<(IpAddr, Vec<&[u8]>)> {
    let sliced = SlicedPacket::from_ip(packet).ok()?;
    let dst: IpAddr = match sliced.net? {
        NetSlice::Ipv4(v4) => IpAddr::V4(v4.header().destination_addr()),
        NetSlice::Ipv6(v6) => IpAddr::V6(v6.header().destination_addr()),
        _ => return None,
    };
    match sliced.transport? {
        TransportSlice::Udp(u) => Some((dst, vec![u.payload()])),
        TransportSlice::Tcp(t) => {
            // Whole length-prefixed messages only; a partial one makes the segment unreadable.
            let mut p = t.payload();
            let mut out = Vec::new();
            while !p.is_empty() {
                if p.len() < 2 {
                    return None;
                }
                let n = usize::from(u16::from_be_bytes([p[0], p[1]]));
                if p.len() < 2 + n {
                    return None;
                }
                out.push(&p[2..2 + n]);
                p = &p[2 + n..];
            }
            Some((dst, out))
        }
        _ => None,
    }
}

/// The addresses of one DNS answer message for its question's name, with their TTL (the
/// shortest along the CNAME chain). `None`: not a readable answer.
pub fn answer_addresses(message: &[u8]) -> Option<(String, Vec<(IpAddr, u32)>)> {
    let packet = simple_dns::Packet::parse(message).ok()?;
    if !packet.has_flags(simple_dns::PacketFlag::RESPONSE) {
        return None;
    }
    let question = packet.questions.first()?;
    let asked = normalize(&question.qname.to_string());
    let mut chain: Vec<(String, u32)> = vec![(asked.clone(), u32::MAX)];
    for _ in 0..MAX_CHAIN {
        let (last, ttl) = chain.last().cloned()?;
        let next = packet.answers.iter().find_map(|rr| match &rr.rdata {
            RData::CNAME(c) if normalize(&rr.name.to_string()) == last => {
                Some((normalize(&c.0.to_string()), ttl.min(rr.ttl)))
            }
            _ => None,
        });
        match next {
            Some(n) if !chain.iter().any(|(c, _)| *c == n.0) => chain.push(n),
            _ => break,
        }
    }
    let (last, chain_ttl) = chain.last().cloned()?;
    let mut out = Vec::new();
    for rr in &packet.answers {
        if normalize(&rr.name.to_string()) != last {
            continue;
        }
        let ip = match &rr.rdata {
            RData::A(a) => IpAddr::V4(Ipv4Addr::from(a.address)),
            RData::AAAA(a) => IpAddr::V6(Ipv6Addr::from(a.address)),
            _ => continue,
        };
        out.push((ip, chain_ttl.min(rr.ttl)));
    }
    Some((asked, out))
}

/// What the held `packet` teaches under `plan`.
pub fn answer_learns(packet: &[u8], plan: &DnsPlan, clamp: &TtlClamp) -> Outcome {
    let Some((dst, msgs)) = messages(packet) else {
        return Outcome::Unparsed;
    };
    if msgs.is_empty() {
        return Outcome::Ignored;
    }
    let Some(rules) = plan.by_pod.get(&dst) else {
        return Outcome::Ignored;
    };
    let mut learned = BTreeSet::new();
    let mut out = Vec::new();
    for m in msgs {
        let Some((asked, addrs)) = answer_addresses(m) else {
            return Outcome::Unparsed;
        };
        for rule in rules {
            if !rule.matcher.matches(&asked) {
                continue;
            }
            for (ip, ttl) in &addrs {
                if out.len() >= MAX_ADDRESSES_PER_ANSWER {
                    break;
                }
                let l = Learned {
                    set: learned_set_name(&rule.base, Family::of(ip)),
                    addr: *ip,
                    timeout: clamp.clamp(*ttl),
                };
                if learned.insert((l.set.clone(), l.addr)) {
                    out.push((l, asked.clone(), rule.rule.clone()));
                }
            }
        }
    }
    if out.is_empty() {
        Outcome::Ignored
    } else {
        Outcome::Learn(out)
    }
}

/// Where learned addresses go: the kernel (one transaction, returning once committed), or a
/// recorder in tests.
pub trait LearnSink: Send {
    fn learn(&mut self, learned: &[Learned]) -> anyhow::Result<()>;
}

impl LearnSink for crate::dataplane::dns::LearnSocket {
    fn learn(&mut self, learned: &[Learned]) -> anyhow::Result<()> {
        Ok(crate::dataplane::dns::LearnSocket::learn(self, learned)?)
    }
}

/// One address currently mapped to a name (for `explain` and the flow logs).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mapping {
    pub name: String,
    pub rule: String,
    /// Seconds left before new connections stop being allowed.
    pub expires_in_s: u64,
}

/// The reader's state: the plan, what was learned (to answer `explain` and to put the
/// addresses back after a table replace), and the sink.
pub struct Learner {
    plan: DnsPlan,
    clamp: TtlClamp,
    sink: Box<dyn LearnSink>,
    /// (set, address) -> (name, rule, expiry).
    learned: BTreeMap<(String, IpAddr), (String, String, Instant)>,
    sets: BTreeSet<String>,
    pub counters: Arc<DnsCounters>,
}

impl Learner {
    pub fn new(clamp: TtlClamp, sink: Box<dyn LearnSink>, counters: Arc<DnsCounters>) -> Self {
        Learner {
            plan: DnsPlan::default(),
            clamp,
            sink,
            learned: BTreeMap::new(),
            sets: BTreeSet::new(),
            counters,
        }
    }

    /// A new ruleset is in the kernel. After a table replace (`replaced`) its learned sets are
    /// empty: what is still valid goes back, in one transaction.
    pub fn set_plan(&mut self, objects: &DomainObjects, replaced: bool, now: Instant) {
        self.plan = DnsPlan::from_objects(objects);
        self.sets = objects.sets.keys().cloned().collect();
        self.learned
            .retain(|(set, _), (_, _, exp)| *exp > now && self.sets.contains(set));
        if replaced && !self.learned.is_empty() {
            let back: Vec<Learned> = self
                .learned
                .iter()
                .map(|((set, addr), (_, _, exp))| Learned {
                    set: set.clone(),
                    addr: *addr,
                    timeout: exp
                        .saturating_duration_since(now)
                        .max(Duration::from_secs(1)),
                })
                .collect();
            if let Err(e) = self.sink.learn(&back) {
                tracing::warn!("putting learned DNS addresses back: {e:#}");
            }
        }
    }

    /// Handles one held answer; returns once what it teaches is committed (or failed).
    pub fn handle(&mut self, packet: &[u8], now: Instant) -> Outcome {
        use std::sync::atomic::Ordering::Relaxed;
        self.counters.held.fetch_add(1, Relaxed);
        let outcome = answer_learns(packet, &self.plan, &self.clamp);
        match &outcome {
            Outcome::Unparsed => {
                self.counters.unparsed.fetch_add(1, Relaxed);
            }
            Outcome::Ignored => {}
            Outcome::Learn(items) => {
                let adds: Vec<Learned> = items
                    .iter()
                    .filter(|(l, _, _)| self.sets.contains(&l.set))
                    .map(|(l, _, _)| l.clone())
                    .collect();
                match self.sink.learn(&adds) {
                    Ok(()) => {
                        self.counters.learned.fetch_add(adds.len() as u64, Relaxed);
                        for (l, name, rule) in items {
                            self.learned.insert(
                                (l.set.clone(), l.addr),
                                (name.clone(), rule.clone(), now + l.timeout),
                            );
                        }
                    }
                    Err(e) => {
                        self.counters.failed.fetch_add(1, Relaxed);
                        tracing::warn!("learning DNS addresses failed (the answer passes): {e:#}");
                    }
                }
            }
        }
        outcome
    }

    /// The names currently mapped to `ip`.
    pub fn names_of(&self, ip: IpAddr, now: Instant) -> Vec<Mapping> {
        self.learned
            .iter()
            .filter(|((_, a), (_, _, exp))| *a == ip && *exp > now)
            .map(|(_, (name, rule, exp))| Mapping {
                name: name.clone(),
                rule: rule.clone(),
                expires_in_s: exp.saturating_duration_since(now).as_secs(),
            })
            .collect()
    }

    /// Every current mapping, by address.
    pub fn mappings(&self, now: Instant) -> BTreeMap<IpAddr, Vec<Mapping>> {
        let mut out: BTreeMap<IpAddr, Vec<Mapping>> = BTreeMap::new();
        for ((_, a), (name, rule, exp)) in &self.learned {
            if *exp > now {
                out.entry(*a).or_default().push(Mapping {
                    name: name.clone(),
                    rule: rule.clone(),
                    expires_in_s: exp.saturating_duration_since(now).as_secs(),
                });
            }
        }
        out
    }
}

/// The shared learner: the reader thread handles answers, the enforcer updates the plan.
pub type SharedLearner = Arc<Mutex<Learner>>;

/// Reads NFQUEUE `queue` until the process ends, in the calling thread's network namespace.
/// Every packet gets ACCEPT, after what it teaches is committed.
pub fn run_reader(
    queue: u16,
    learner: SharedLearner,
    metrics: crate::observe::metrics::Metrics,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut q = nfq::Queue::open().context("opening the NFQUEUE socket")?;
    q.bind(queue)
        .with_context(|| format!("binding NFQUEUE {queue}"))?;
    // A full queue lets answers through rather than dropping them: DNS never breaks.
    q.set_fail_open(queue, true)?;
    q.set_copy_range(queue, u16::MAX)?;
    q.set_queue_max_len(queue, 4096)?;
    let _ = q.set_recv_enobufs(false);
    loop {
        let mut msg = match q.recv() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // ENOBUFS and the like: the kernel dropped queue messages (it accepted their
                // packets, fail-open); go on reading.
                tracing::warn!("NFQUEUE read: {e}");
                continue;
            }
        };
        let t0 = Instant::now();
        {
            let mut l = learner.lock().unwrap_or_else(|p| p.into_inner());
            l.handle(msg.get_payload(), t0);
        }
        msg.set_verdict(nfq::Verdict::Accept);
        if let Err(e) = q.verdict(msg) {
            tracing::warn!("NFQUEUE verdict: {e}");
        }
        metrics.observe_dns_hold(t0.elapsed());
    }
}

/// Opens the learning socket and starts the reader thread of NFQUEUE `queue`, both in the
/// calling thread's network namespace. The reader runs until the process ends; if it cannot
/// bind the queue it says so and ends, and the held answers pass (`bypass`): fail closed.
pub fn start(
    queue: u16,
    clamp: TtlClamp,
    metrics: &crate::observe::metrics::Metrics,
) -> anyhow::Result<SharedLearner> {
    use anyhow::Context as _;
    let sock = crate::dataplane::dns::LearnSocket::open()
        .context("opening the netlink socket of the DNS reader")?;
    let learner = Learner::new(clamp, Box::new(sock), metrics.dns_counters());
    let learner: SharedLearner = Arc::new(Mutex::new(learner));
    let names = learner.clone();
    metrics.serve_dns_names(Box::new(move || {
        let l = names.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::to_string(&l.mappings(Instant::now())).unwrap_or_else(|_| "{}".into())
    }));
    let names = learner.clone();
    metrics.lookup_dns_names(Box::new(move |ip| {
        let l = names.lock().unwrap_or_else(|p| p.into_inner());
        l.names_of(ip, Instant::now())
            .into_iter()
            .map(|m| format!("{} (rule {})", m.name, m.rule))
            .collect()
    }));
    let shared = learner.clone();
    let m = metrics.clone();
    std::thread::Builder::new()
        .name("dns-reader".into())
        .spawn(move || {
            if let Err(e) = run_reader(queue, shared, m) {
                tracing::error!(
                    queue,
                    "DNS reader stopped: {e:#}; domainNames rules learn nothing (their connections fail closed)"
                );
            }
        })
        .context("starting the DNS reader thread")?;
    Ok(learner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::dns::DomainRule;
    use crate::policy::model::{ClusterPolicyKey, ClusterPolicyKind, ObjectKey, Tier};
    use proptest::prelude::*;
    use simple_dns::{CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, Question, ResourceRecord};

    const POD: &str = "10.0.0.5";
    const OTHER: &str = "10.0.0.6";

    fn objects() -> DomainObjects {
        let mut o = DomainObjects::default();
        let mut pods = BTreeMap::new();
        pods.insert(ObjectKey::new("a", "client"), vec![POD.parse().unwrap()]);
        o.rules.insert(
            "c/p/e0".into(),
            DomainRule {
                policy: ClusterPolicyKey {
                    kind: ClusterPolicyKind::ClusterNetworkPolicy,
                    name: "p".into(),
                },
                tier: Tier::Admin,
                label: "web".into(),
                names: vec!["api.example.com".into(), "*.cdn.example".into()],
                pods,
            },
        );
        for f in [Family::V4, Family::V6] {
            let name = learned_set_name("c/p/e0", f);
            o.sets.insert(
                name.clone(),
                crate::dataplane::ruleset::NamedSet {
                    name,
                    family: f,
                    kind: crate::dataplane::ruleset::SetKind::Learned,
                    elements: vec![],
                },
            );
        }
        o
    }

    /// A DNS answer: question `q`, CNAMEs (from, to, ttl), then A/AAAA records (name, ip, ttl).
    fn answer(q: &str, cnames: &[(&str, &str, u32)], addrs: &[(&str, &str, u32)]) -> Vec<u8> {
        let mut p = Packet::new_reply(1);
        p.set_flags(PacketFlag::RECURSION_AVAILABLE);
        p.questions.push(Question::new(
            Name::new_unchecked(q),
            QTYPE::ANY,
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        for (from, to, ttl) in cnames {
            p.answers.push(ResourceRecord::new(
                Name::new_unchecked(from),
                CLASS::IN,
                *ttl,
                RData::CNAME(simple_dns::rdata::CNAME(Name::new_unchecked(to))),
            ));
        }
        for (name, ip, ttl) in addrs {
            let rdata = match ip.parse::<IpAddr>().unwrap() {
                IpAddr::V4(a) => RData::A(simple_dns::rdata::A { address: a.into() }),
                IpAddr::V6(a) => RData::AAAA(simple_dns::rdata::AAAA { address: a.into() }),
            };
            p.answers.push(ResourceRecord::new(
                Name::new_unchecked(name),
                CLASS::IN,
                *ttl,
                rdata,
            ));
        }
        p.build_bytes_vec().unwrap()
    }

    /// The answer in a UDP/IPv4 packet from the resolver to `dst`.
    fn udp(dst: &str, payload: &[u8]) -> Vec<u8> {
        let dst: Ipv4Addr = dst.parse().unwrap();
        let b = etherparse::PacketBuilder::ipv4([10, 96, 0, 10], dst.octets(), 64).udp(53, 40000);
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    fn tcp(dst: &str, payload: &[u8]) -> Vec<u8> {
        let dst: Ipv4Addr = dst.parse().unwrap();
        let b = etherparse::PacketBuilder::ipv4([10, 96, 0, 10], dst.octets(), 64)
            .tcp(53, 40000, 1, 1000)
            .ack(1);
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    fn learned(o: &Outcome) -> Vec<(String, u64)> {
        match o {
            Outcome::Learn(v) => v
                .iter()
                .map(|(l, _, _)| (l.addr.to_string(), l.timeout.as_secs()))
                .collect(),
            _ => vec![],
        }
    }

    fn plan() -> DnsPlan {
        DnsPlan::from_objects(&objects())
    }

    #[test]
    fn exact_and_wildcard_names_learn_their_addresses_with_clamped_ttls() {
        let c = TtlClamp::default();
        let a = answer(
            "API.example.com.",
            &[],
            &[("api.example.com", "192.0.2.1", 300)],
        );
        assert_eq!(
            learned(&answer_learns(&udp(POD, &a), &plan(), &c)),
            [("192.0.2.1".into(), 300)]
        );
        let a = answer(
            "x.cdn.example",
            &[],
            &[
                ("x.cdn.example", "192.0.2.2", 5),
                ("x.cdn.example", "2001:db8::2", 99999),
            ],
        );
        assert_eq!(
            learned(&answer_learns(&udp(POD, &a), &plan(), &c)),
            [("192.0.2.2".into(), 30), ("2001:db8::2".into(), 3600)]
        );
        // The suffix itself, another name, another pod: nothing.
        for (dst, q) in [
            (POD, "cdn.example"),
            (POD, "evil.example.com"),
            (OTHER, "api.example.com"),
        ] {
            let a = answer(q, &[], &[(q, "192.0.2.9", 60)]);
            assert_eq!(
                answer_learns(&udp(dst, &a), &plan(), &c),
                Outcome::Ignored,
                "{dst} {q}"
            );
        }
    }

    #[test]
    fn cname_chains_give_the_final_addresses_to_the_asked_name() {
        let a = answer(
            "api.example.com",
            &[
                ("api.example.com", "edge.cdn.net", 100),
                ("edge.cdn.net", "e1.cdn.net", 40),
            ],
            &[
                ("e1.cdn.net", "192.0.2.7", 600),
                ("unrelated.net", "192.0.2.8", 600),
            ],
        );
        let o = answer_learns(
            &udp(POD, &a),
            &plan(),
            &TtlClamp::new(Duration::ZERO, Duration::from_secs(3600)),
        );
        assert_eq!(learned(&o), [("192.0.2.7".into(), 40)]);
        match o {
            Outcome::Learn(v) => assert_eq!(v[0].1, "api.example.com"),
            _ => unreachable!(),
        }
    }

    #[test]
    fn tcp_segments_with_whole_messages_are_read_others_pass_unparsed() {
        let a = answer(
            "api.example.com",
            &[],
            &[("api.example.com", "192.0.2.1", 60)],
        );
        let mut framed = (a.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&a);
        let c = TtlClamp::default();
        assert_eq!(
            learned(&answer_learns(&tcp(POD, &framed), &plan(), &c)).len(),
            1
        );
        assert_eq!(
            answer_learns(&tcp(POD, &framed[..framed.len() - 1]), &plan(), &c),
            Outcome::Unparsed
        );
        assert_eq!(answer_learns(&tcp(POD, &[]), &plan(), &c), Outcome::Ignored);
    }

    #[test]
    fn queries_and_garbage_learn_nothing() {
        let c = TtlClamp::default();
        let mut q = Packet::new_query(1);
        q.questions.push(Question::new(
            Name::new_unchecked("api.example.com"),
            QTYPE::ANY,
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        let q = q.build_bytes_vec().unwrap();
        assert_eq!(answer_learns(&udp(POD, &q), &plan(), &c), Outcome::Unparsed);
        assert_eq!(
            answer_learns(&udp(POD, b"\x00\x01garbage"), &plan(), &c),
            Outcome::Unparsed
        );
        assert_eq!(answer_learns(b"not ip", &plan(), &c), Outcome::Unparsed);
    }

    struct Record(Arc<Mutex<Vec<Learned>>>);
    impl LearnSink for Record {
        fn learn(&mut self, l: &[Learned]) -> anyhow::Result<()> {
            self.0.lock().unwrap().extend_from_slice(l);
            Ok(())
        }
    }

    #[test]
    fn the_learner_commits_remembers_and_puts_back_after_a_replace() {
        let rec = Arc::new(Mutex::new(Vec::new()));
        let mut l = Learner::new(
            TtlClamp::default(),
            Box::new(Record(rec.clone())),
            Arc::default(),
        );
        let t0 = Instant::now();
        l.set_plan(&objects(), true, t0);
        let a = answer(
            "api.example.com",
            &[],
            &[("api.example.com", "192.0.2.1", 60)],
        );
        assert!(matches!(l.handle(&udp(POD, &a), t0), Outcome::Learn(_)));
        assert_eq!(rec.lock().unwrap().len(), 1);
        let names = l.names_of("192.0.2.1".parse().unwrap(), t0);
        assert_eq!(names[0].name, "api.example.com");
        assert!(names[0].rule.contains("web"), "{names:?}");
        l.set_plan(&objects(), true, t0 + Duration::from_secs(10));
        assert_eq!(rec.lock().unwrap().len(), 2, "put back after a replace");
        assert_eq!(rec.lock().unwrap()[1].timeout, Duration::from_secs(50));
        l.set_plan(&objects(), true, t0 + Duration::from_secs(61));
        assert_eq!(rec.lock().unwrap().len(), 2, "expired: not put back");
        assert!(
            l.names_of("192.0.2.1".parse().unwrap(), t0 + Duration::from_secs(61))
                .is_empty()
        );
    }

    proptest! {
        /// Random bytes, and answers with random bytes flipped or cut: never a panic, and an
        /// answer that does not parse teaches nothing.
        #[test]
        fn fuzzed_answers_never_crash_or_learn_from_garbage(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in any::<usize>(),
        ) {
            let c = TtlClamp::default();
            let o = answer_learns(&udp(POD, &bytes), &plan(), &c);
            if simple_dns::Packet::parse(&bytes).is_err() {
                prop_assert_eq!(o, Outcome::Unparsed);
            }
            let mut a = answer("api.example.com", &[("api.example.com", "x.net", 9)], &[("x.net", "192.0.2.1", 60)]);
            for (at, v) in flips {
                let n = a.len();
                a[at % n] = v;
            }
            a.truncate(cut % (a.len() + 1));
            let o = answer_learns(&udp(POD, &a), &plan(), &c);
            if simple_dns::Packet::parse(&a).is_err() {
                prop_assert_eq!(o, Outcome::Unparsed);
            }
            let _ = answer_learns(&a, &plan(), &c);
        }
    }
}
