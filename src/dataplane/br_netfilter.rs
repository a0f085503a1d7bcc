//! The br_netfilter precondition: on a node with a Linux bridge (flannel's `cni0`), pod-to-pod
//! traffic on the same bridge only reaches the inet forward hook when
//! `net.bridge.bridge-nf-call-iptables` (and `-ip6tables` for IPv6) is 1. Without it every
//! policy silently fails open for same-node traffic, so the daemon must say so loudly.

use std::fs;
use std::path::Path;

/// What was found on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrNetfilter {
    /// Linux bridges (interfaces with a `bridge` directory in sysfs).
    pub bridges: Vec<String>,
    /// `None` when the sysctl does not exist (br_netfilter not loaded).
    pub call_iptables: Option<bool>,
    pub call_ip6tables: Option<bool>,
}

impl BrNetfilter {
    /// Reads `/sys/class/net` and `/proc/sys/net/bridge` of the caller's network namespace.
    pub fn probe() -> Self {
        Self::probe_at(
            Path::new("/sys/class/net"),
            Path::new("/proc/sys/net/bridge"),
        )
    }

    pub fn probe_at(sys_class_net: &Path, proc_bridge: &Path) -> Self {
        let mut bridges = Vec::new();
        if let Ok(dir) = fs::read_dir(sys_class_net) {
            for entry in dir.flatten() {
                if entry.path().join("bridge").is_dir() {
                    bridges.push(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        bridges.sort();
        let read = |name: &str| {
            fs::read_to_string(proc_bridge.join(name))
                .ok()
                .map(|v| v.trim() == "1")
        };
        Self {
            bridges,
            call_iptables: read("bridge-nf-call-iptables"),
            call_ip6tables: read("bridge-nf-call-ip6tables"),
        }
    }

    /// Probes this node and logs whether bridged traffic can be filtered, loudly if not.
    pub fn probe_and_report() -> Self {
        let brnf = Self::probe();
        match brnf.problem() {
            Some(p) => tracing::error!("{p}"),
            None if !brnf.bridges.is_empty() => {
                tracing::info!(bridges = ?brnf.bridges, "br_netfilter is on: bridged traffic is filtered")
            }
            None => tracing::info!("no Linux bridge on this node: routed pod traffic"),
        }
        brnf
    }

    /// `Some(diagnostic)` when a bridge exists and bridged traffic bypasses the inet hooks.
    pub fn problem(&self) -> Option<String> {
        if self.bridges.is_empty() {
            return None;
        }
        let mut off = Vec::new();
        if self.call_iptables != Some(true) {
            off.push((
                "net.bridge.bridge-nf-call-iptables",
                "IPv4",
                self.call_iptables,
            ));
        }
        if self.call_ip6tables != Some(true) {
            off.push((
                "net.bridge.bridge-nf-call-ip6tables",
                "IPv6",
                self.call_ip6tables,
            ));
        }
        if off.is_empty() {
            return None;
        }
        let mut msg = format!(
            "NetworkPolicy is NOT enforced between pods on the same bridge ({}): ",
            self.bridges.join(", ")
        );
        let parts: Vec<String> = off
            .iter()
            .map(|(name, fam, v)| match v {
                Some(_) => format!("{name}=0 ({fam} bridged traffic skips the inet forward hook)"),
                None => format!("{name} is missing (br_netfilter not loaded; {fam} bridged traffic skips the inet forward hook)"),
            })
            .collect();
        msg.push_str(&parts.join("; "));
        msg.push_str(". Fix: `modprobe br_netfilter` if needed, then ");
        let fixes: Vec<String> = off
            .iter()
            .map(|(n, _, _)| format!("`sysctl -w {n}=1`"))
            .collect();
        msg.push_str(&fixes.join(" and "));
        msg.push_str(" (persist it in /etc/sysctl.d).");
        Some(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_bridge_no_problem() {
        let b = BrNetfilter {
            bridges: vec![],
            call_iptables: None,
            call_ip6tables: None,
        };
        assert!(b.problem().is_none());
    }

    #[test]
    fn bridge_without_sysctl_is_loud() {
        let b = BrNetfilter {
            bridges: vec!["cni0".into()],
            call_iptables: Some(false),
            call_ip6tables: None,
        };
        let p = b.problem().unwrap();
        assert!(p.contains("cni0"));
        assert!(p.contains("sysctl -w net.bridge.bridge-nf-call-iptables=1"));
        assert!(p.contains("bridge-nf-call-ip6tables is missing"));
        let ok = BrNetfilter {
            call_iptables: Some(true),
            call_ip6tables: Some(true),
            ..b
        };
        assert!(ok.problem().is_none());
    }

    #[test]
    fn probe_reads_files() {
        let dir = std::env::temp_dir().join(format!("nftpol-brnf-{}", std::process::id()));
        let net = dir.join("net");
        let br = dir.join("bridge");
        fs::create_dir_all(net.join("cni0/bridge")).unwrap();
        fs::create_dir_all(net.join("eth0")).unwrap();
        fs::create_dir_all(&br).unwrap();
        fs::write(br.join("bridge-nf-call-iptables"), "1\n").unwrap();
        fs::write(br.join("bridge-nf-call-ip6tables"), "0\n").unwrap();
        let b = BrNetfilter::probe_at(&net, &br);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(b.bridges, vec!["cni0".to_string()]);
        assert_eq!(b.call_iptables, Some(true));
        assert_eq!(b.call_ip6tables, Some(false));
        assert!(b.problem().unwrap().contains("ip6tables=0"));
    }
}
