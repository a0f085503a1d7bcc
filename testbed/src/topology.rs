//! The testbed's network: one node namespace and one namespace per pod, wired like a
//! flannel-style bridged node or a Calico-style routed node, so that every pod reaches every
//! other pod through the node namespace, where nftpol enforces.
//!
//! - [`Mode::Bridge`]: a `cni0` bridge in the node namespace. For every /24 (IPv4) and /64
//!   (IPv6) that some pod address falls in, the bridge gets a gateway address in it; each pod
//!   has its addresses with that prefix (so pods of one subnet talk over L2 through the bridge)
//!   and default routes via its subnet's gateway (so pods of other subnets are routed by the
//!   node, out of the same bridge). br_netfilter is switched on in the node namespace, as
//!   enforcement on bridged traffic needs it.
//! - [`Mode::Routed`]: one veth per pod (`cali<i>` in the node namespace), /32 and /128 routes
//!   to each pod address in the node, and link-local gateways like Calico's: every host-side
//!   veth has `169.254.1.1/32` and `fe80::1/64`, each pod's default routes point at them.
//!
//! IPv6 is on everywhere with duplicate address detection off, so addresses work at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use anyhow::{Context, Result, bail};

use super::netns::Netns;
use nftpol::policy::model::ObjectKey;

/// How pods are attached to the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// flannel-style: veths enslaved to a `cni0` bridge that holds the gateway addresses.
    Bridge,
    /// Calico-style: one routed veth per pod, host routes, link-local gateways.
    Routed,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Bridge, Mode::Routed];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Bridge => "bridge",
            Mode::Routed => "routed",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bridge" => Ok(Mode::Bridge),
            "routed" => Ok(Mode::Routed),
            _ => Err(format!("unknown mode {s:?} (expected bridge or routed)")),
        }
    }
}

/// The bridge's name in the node namespace (flannel's).
pub const BRIDGE: &str = "cni0";
/// The gateway address of routed pods (Calico's), on every host-side veth.
pub const ROUTED_GW4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The IPv6 link-local gateway of routed pods, on every host-side veth.
pub const ROUTED_GW6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// One pod's namespace and addresses.
#[derive(Debug)]
pub struct PodNet {
    pub key: ObjectKey,
    pub ips: Vec<IpAddr>,
    /// The host side of the pod's veth, in the node namespace.
    pub host_if: String,
    pub ns: Netns,
}

/// A node namespace with its pods. Dropping it deletes every namespace (pods first).
#[derive(Debug)]
pub struct Topology {
    pub mode: Mode,
    /// Declared before `node` so that pods are deleted first.
    pub pods: Vec<PodNet>,
    pub node: Netns,
}

/// The subnet an address is placed in on a bridge: its /24 or /64.
fn subnet_of(ip: IpAddr) -> (IpAddr, u8) {
    match ip {
        IpAddr::V4(v4) => (IpAddr::V4(Ipv4Addr::from(u32::from(v4) & 0xffff_ff00)), 24),
        IpAddr::V6(v6) => (
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
            64,
        ),
    }
}

/// Picks a gateway for each subnet: the first host address (`.1`, `::1`) no pod uses.
fn gateways(all_ips: &BTreeSet<IpAddr>) -> Result<BTreeMap<(IpAddr, u8), IpAddr>> {
    let mut out = BTreeMap::new();
    for &ip in all_ips {
        let subnet = subnet_of(ip);
        if out.contains_key(&subnet) {
            continue;
        }
        let gw = match subnet.0 {
            IpAddr::V4(net) => (1..255u32)
                .map(|i| IpAddr::V4(Ipv4Addr::from(u32::from(net) + i)))
                .find(|a| !all_ips.contains(a)),
            IpAddr::V6(net) => (1..=u16::MAX as u128)
                .map(|i| IpAddr::V6(Ipv6Addr::from(u128::from(net) + i)))
                .find(|a| !all_ips.contains(a)),
        };
        let gw =
            gw.with_context(|| format!("no free gateway address in {}/{}", subnet.0, subnet.1))?;
        out.insert(subnet, gw);
    }
    Ok(out)
}

impl Topology {
    /// Builds the node and one namespace per pod with the given addresses.
    pub fn new(mode: Mode, pods: &[(ObjectKey, Vec<IpAddr>)]) -> Result<Self> {
        let mut seen = BTreeSet::new();
        for (key, ips) in pods {
            if ips.is_empty() {
                bail!("pod {key} has no address");
            }
            for ip in ips {
                if !seen.insert(*ip) {
                    bail!("address {ip} is used twice (pod {key})");
                }
            }
        }
        let node = Netns::with_tag("node")?;
        let node_sysctls: &[(&str, &str)] = &[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv6.conf.all.disable_ipv6", "0"),
            ("net.ipv6.conf.default.disable_ipv6", "0"),
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            // Strict reverse-path filtering would drop routed traffic whose source the node only
            // knows through a /32; real nodes run with it loose or off too.
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ];
        for (k, v) in node_sysctls {
            node.sysctl(k, v)?;
        }
        if mode == Mode::Bridge {
            // Bridged pod-to-pod packets reach the inet hooks (and conntrack) only with these.
            node.sysctl("net.bridge.bridge-nf-call-iptables", "1")?;
            node.sysctl("net.bridge.bridge-nf-call-ip6tables", "1")?;
        }

        let mut pod_nets = Vec::with_capacity(pods.len());
        for (i, (key, ips)) in pods.iter().enumerate() {
            let ns = Netns::with_tag(&format!("{}-{}", key.namespace, key.name))?;
            for (k, v) in [
                ("net.ipv6.conf.all.disable_ipv6", "0"),
                ("net.ipv6.conf.default.disable_ipv6", "0"),
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
                // Listeners bind `[::]` and serve IPv4 through mapped addresses.
                ("net.ipv6.bindv6only", "0"),
            ] {
                ns.sysctl(k, v)?;
            }
            let host_if = match mode {
                Mode::Bridge => format!("veth{i}"),
                Mode::Routed => format!("cali{i}"),
            };
            pod_nets.push(PodNet {
                key: key.clone(),
                ips: ips.clone(),
                host_if,
                ns,
            });
        }
        let topo = Topology {
            mode,
            pods: pod_nets,
            node,
        };
        match mode {
            Mode::Bridge => topo.wire_bridge(&seen)?,
            Mode::Routed => topo.wire_routed()?,
        }
        Ok(topo)
    }

    fn wire_bridge(&self, all_ips: &BTreeSet<IpAddr>) -> Result<()> {
        let gws = gateways(all_ips)?;
        let mut node = format!(
            "link add {BRIDGE} type bridge stp_state 0 mcast_snooping 0\nlink set {BRIDGE} up\n"
        );
        for ((_, prefix), gw) in &gws {
            node.push_str(&format!(
                "addr add {gw}/{prefix} dev {BRIDGE}{}\n",
                nodad(*gw)
            ));
        }
        for pod in &self.pods {
            node.push_str(&format!(
                "link add {} type veth peer name eth0 netns {}\nlink set {} master {BRIDGE} up\n",
                pod.host_if,
                pod.ns.name(),
                pod.host_if
            ));
        }
        self.node.ip_batch(&node)?;
        for pod in &self.pods {
            let mut script = String::from("link set eth0 up\n");
            for ip in &pod.ips {
                let (_, prefix) = subnet_of(*ip);
                script.push_str(&format!("addr add {ip}/{prefix} dev eth0{}\n", nodad(*ip)));
            }
            // The default route of each family goes via the gateway of its first address.
            for v6 in [false, true] {
                if let Some(ip) = pod.ips.iter().find(|ip| ip.is_ipv6() == v6) {
                    let gw = gws[&subnet_of(*ip)];
                    script.push_str(&format!("route add default via {gw} dev eth0\n"));
                }
            }
            pod.ns.ip_batch(&script)?;
        }
        Ok(())
    }

    fn wire_routed(&self) -> Result<()> {
        let mut node = String::new();
        for pod in &self.pods {
            let h = &pod.host_if;
            node.push_str(&format!(
                "link add {h} type veth peer name eth0 netns {}\n\
                 link set {h} up\n\
                 addr add {ROUTED_GW4}/32 dev {h}\n\
                 addr add {ROUTED_GW6}/64 dev {h} nodad\n",
                pod.ns.name()
            ));
            for ip in &pod.ips {
                let host = if ip.is_ipv4() { 32 } else { 128 };
                node.push_str(&format!("route add {ip}/{host} dev {h}\n"));
            }
        }
        self.node.ip_batch(&node)?;
        for pod in &self.pods {
            let mut script = String::from("link set eth0 up\n");
            for ip in &pod.ips {
                let host = if ip.is_ipv4() { 32 } else { 128 };
                script.push_str(&format!("addr add {ip}/{host} dev eth0{}\n", nodad(*ip)));
            }
            if pod.ips.iter().any(|ip| ip.is_ipv4()) {
                script.push_str(&format!(
                    "route add {ROUTED_GW4}/32 dev eth0 scope link\n\
                     route add default via {ROUTED_GW4} dev eth0\n"
                ));
            }
            if pod.ips.iter().any(|ip| ip.is_ipv6()) {
                script.push_str(&format!("route add default via {ROUTED_GW6} dev eth0\n"));
            }
            pod.ns.ip_batch(&script)?;
        }
        Ok(())
    }

    /// The pod with this key.
    pub fn pod(&self, key: &ObjectKey) -> Option<&PodNet> {
        self.pods.iter().find(|p| &p.key == key)
    }

    /// Names of every namespace of this topology (node first).
    pub fn namespace_names(&self) -> Vec<String> {
        std::iter::once(self.node.name().to_owned())
            .chain(self.pods.iter().map(|p| p.ns.name().to_owned()))
            .collect()
    }
}

fn nodad(ip: IpAddr) -> &'static str {
    if ip.is_ipv6() { " nodad" } else { "" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateways_avoid_pod_addresses_and_cover_every_subnet() {
        let ips: BTreeSet<IpAddr> = [
            "10.244.1.1",
            "10.244.1.10",
            "10.244.3.12",
            "fd00::1",
            "fd00::a",
        ]
        .iter()
        .map(|s| s.parse().expect("ip"))
        .collect();
        let gws = gateways(&ips).expect("gateways");
        let get = |net: &str, p: u8| gws[&(net.parse().expect("ip"), p)].to_string();
        assert_eq!(get("10.244.1.0", 24), "10.244.1.2");
        assert_eq!(get("10.244.3.0", 24), "10.244.3.1");
        assert_eq!(get("fd00::", 64), "fd00::2");
        assert_eq!(gws.len(), 3);
    }
}
