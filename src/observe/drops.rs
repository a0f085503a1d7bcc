//! The drop counters behind each scrape: the counters ending the per-pod chains, read from the
//! kernel through a [`CounterReader`] when Prometheus asks, summed per direction and namespace
//! into `nftpol_dropped_packets` and `nftpol_audit_would_drop_packets`; and the counters of
//! the ClusterNetworkPolicy Deny rules' drop chains, summed per tier and direction into
//! `nftpol_cluster_policy_dropped_packets` (and its audit twin).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::lock;
use crate::dataplane::CounterReader;
use crate::dataplane::ruleset::parse_cluster_drop_chain;
use crate::dataplane::sys::{CountedVerdict, RuleCounter};

/// Per-namespace totals of the counters ending the per-pod chains: drops, and in audit mode
/// would-be drops. The kernel's counters go back to zero when a chain is replaced or deleted;
/// the totals only go up: a counter lower than last time counts from zero. Packets counted
/// between the last scrape and a chain's removal are lost, which is the price of bounded
/// cardinality (namespaces, not pods).
#[derive(Debug, Default)]
struct DropTotals {
    last: HashMap<(String, CountedVerdict), u64>,
    /// (audit, direction, namespace) -> packets.
    totals: BTreeMap<(bool, &'static str, String), u64>,
    /// ClusterNetworkPolicy Deny rules' drop chains: (audit, tier, direction) -> packets.
    cluster: BTreeMap<(bool, &'static str, &'static str), u64>,
}

/// `ing/<namespace>/<pod>` or `egr/...`: the direction and namespace of a per-pod chain.
/// Namespace names never contain `/` and are never shortened (see `pod_base_name`).
fn parse_chain(chain: &str) -> Option<(&'static str, &str)> {
    let (prefix, rest) = chain.split_once('/')?;
    let direction = match prefix {
        "ing" => "ingress",
        "egr" => "egress",
        _ => return None,
    };
    let (namespace, _) = rest.split_once('/')?;
    Some((direction, namespace))
}

impl DropTotals {
    fn update(&mut self, counters: &[RuleCounter]) {
        let mut seen = HashMap::with_capacity(counters.len());
        for c in counters {
            let audit = match c.verdict {
                CountedVerdict::Drop => false,
                CountedVerdict::Return => true,
                CountedVerdict::Other => continue,
            };
            let key = (c.chain.clone(), c.verdict);
            let before = self.last.get(&key).copied().unwrap_or(0);
            let delta = if c.packets >= before {
                c.packets - before
            } else {
                c.packets
            };
            if let Some((direction, namespace)) = parse_chain(&c.chain) {
                *self
                    .totals
                    .entry((audit, direction, namespace.to_string()))
                    .or_default() += delta;
            } else if let Some((tier, direction, _)) = parse_cluster_drop_chain(&c.chain) {
                *self
                    .cluster
                    .entry((audit, tier.as_str(), direction.as_str()))
                    .or_default() += delta;
            } else {
                continue;
            }
            seen.insert(key, c.packets);
        }
        self.last = seen;
    }
}

#[derive(Default)]
pub(super) struct DropCollector {
    reader: Mutex<Option<CounterReader>>,
    totals: Mutex<DropTotals>,
}

impl DropCollector {
    /// Reads the counters through `reader` on every scrape from now on.
    pub(super) fn read_from(&self, reader: CounterReader) {
        *lock(&self.reader) = Some(reader);
    }
}

impl fmt::Debug for DropCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DropCollector").finish_non_exhaustive()
    }
}

impl Collector for DropCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut totals = lock(&self.totals);
        if let Some(reader) = lock(&self.reader).as_ref() {
            match reader.drop_counters() {
                Ok(c) => totals.update(&c),
                // Keep serving the last totals; the next scrape tries again.
                Err(e) => tracing::warn!("reading the drop counters: {e}"),
            }
        }
        for (audit, name, help) in [
            (
                false,
                "nftpol_dropped_packets",
                "Packets dropped by the policies, by direction and namespace of the pod (only goes up)",
            ),
            (
                true,
                "nftpol_audit_would_drop_packets",
                "Packets the policies would have dropped, let through in audit mode, by direction and namespace of the pod (only goes up)",
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for ((a, direction, namespace), n) in &totals.totals {
                if *a == audit {
                    let labels: Vec<(&str, &str)> =
                        vec![("direction", direction), ("namespace", namespace.as_str())];
                    family.encode_family(&labels)?.encode_gauge(n)?;
                }
            }
        }
        for (audit, name, help) in [
            (
                false,
                "nftpol_cluster_policy_dropped_packets",
                "Packets dropped by ClusterNetworkPolicy Deny rules, by tier and direction (only goes up; NetworkPolicy drops are nftpol_dropped_packets)",
            ),
            (
                true,
                "nftpol_cluster_policy_audit_would_drop_packets",
                "Packets ClusterNetworkPolicy Deny rules would have dropped, let through in audit mode, by tier and direction (only goes up)",
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for ((a, tier, direction), n) in &totals.cluster {
                if *a == audit {
                    let labels: Vec<(&str, &str)> = vec![("tier", tier), ("direction", direction)];
                    family.encode_family(&labels)?.encode_gauge(n)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_totals_aggregate_by_namespace_and_survive_resets() {
        let c = |chain: &str, packets: u64, verdict: CountedVerdict| RuleCounter {
            chain: chain.into(),
            packets,
            verdict,
        };
        use CountedVerdict::{Drop, Other, Return};
        let mut t = DropTotals::default();
        t.update(&[
            c("ing/a/p1", 3, Drop),
            c("ing/a/p2", 4, Drop),
            c("egr/b/p1", 1, Drop),
            c("egr/c/p9", 6, Return),
            c("forward", 99, Drop),
            c("ing/a/p3", 50, Other),
        ]);
        let key = |audit: bool, d: &'static str, ns: &str| (audit, d, ns.to_string());
        assert_eq!(t.totals[&key(false, "ingress", "a")], 7);
        assert_eq!(t.totals[&key(false, "egress", "b")], 1);
        assert_eq!(t.totals[&key(true, "egress", "c")], 6);
        // p1's chain was replaced (counter back to 2), p2 went away, c/p9 left audit mode.
        t.update(&[
            c("ing/a/p1", 2, Drop),
            c("egr/b/p1", 5, Drop),
            c("egr/c/p9", 1, Drop),
        ]);
        assert_eq!(t.totals[&key(false, "ingress", "a")], 9);
        assert_eq!(t.totals[&key(false, "egress", "b")], 5);
        assert_eq!(t.totals[&key(false, "egress", "c")], 1);
        assert_eq!(t.totals[&key(true, "egress", "c")], 6);
        assert_eq!(t.totals.len(), 4);
    }

    #[test]
    fn cluster_policy_drops_are_summed_by_tier_and_direction() {
        let c = |chain: &str, packets: u64, verdict: CountedVerdict| RuleCounter {
            chain: chain.into(),
            packets,
            verdict,
        };
        let mut t = DropTotals::default();
        t.update(&[
            c("caidrop/c/deny-y/i0", 3, CountedVerdict::Drop),
            c("caidrop/a/anp/i2", 4, CountedVerdict::Drop),
            c("cbedrop/b/default/e0", 1, CountedVerdict::Drop),
            c("cbiaud/c/base/i1", 2, CountedVerdict::Return),
        ]);
        assert_eq!(t.cluster[&(false, "Admin", "ingress")], 7);
        assert_eq!(t.cluster[&(false, "Baseline", "egress")], 1);
        assert_eq!(t.cluster[&(true, "Baseline", "ingress")], 2);
        assert!(t.totals.is_empty(), "no namespace for shared chains");
    }
}
