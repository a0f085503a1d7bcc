//! `nftpol run --default-deny-unknown --pod-cidr` with real packets on a testbed node: a pod
//! namespace whose Pod object nftpol has not seen (its manifest is not applied yet) has an
//! address inside the pod CIDR, and cannot reach a known pod until its manifest arrives; without
//! the flag it can. Needs root.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use nftpol::policy::model::{ObjectKey, Protocol};
use nftpol_testbed::{Mode, Testbed, netns::Netns};
use serde_json::{Value, json};

mod pods;
use pods::{CLIENT, SERVER, pod};

/// Has a namespace and an address on the node, but no Pod object until the test applies it.
const NEWCOMER: (&str, &str, &str) = ("x", "newcomer", "10.244.1.9");
const T: Duration = Duration::from_millis(700);

fn objects(pods: &[(&str, &str, &str)]) -> Vec<Value> {
    let mut objects =
        vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})];
    objects.extend(pods.iter().map(|p| pod(*p, &[])));
    objects
}

fn testbed(args: &[&str]) -> Option<Testbed> {
    nftpol_testbed::netns::require(&[]);
    let all = objects(&[CLIENT, SERVER, NEWCOMER]);
    let state = nftpol::source::manifest::load_values("cluster", all)
        .expect("cluster loads")
        .state;
    let mut bed = Testbed::new(Mode::Bridge, &state).expect("testbed");
    bed.set_daemon_args(args.iter().map(|a| a.to_string()).collect());
    bed.listen(&ObjectKey::new(SERVER.0, SERVER.1), 80, Protocol::Tcp)
        .expect("listen");
    Some(bed)
}

fn pod_ns<'a>(bed: &'a Testbed, p: (&str, &str, &str)) -> &'a Netns {
    bed.pod_netns(&ObjectKey::new(p.0, p.1))
        .expect("pod on the testbed")
}

fn connects(bed: &Testbed, from: (&str, &str, &str), to: (&str, &str, &str)) -> bool {
    pod_ns(bed, from).tcp_connects(SocketAddr::new(to.2.parse::<IpAddr>().expect("ip"), 80), T)
}

#[test]
fn an_unknown_pod_address_is_dropped_until_the_pod_is_known() {
    let Some(mut bed) = testbed(&["--default-deny-unknown", "--pod-cidr", "10.244.0.0/16"]) else {
        return;
    };
    // No policy at all: only the newcomer's unknown address is denied.
    bed.apply_objects(&objects(&[CLIENT, SERVER]))
        .expect("apply");
    assert!(connects(&bed, CLIENT, SERVER), "a known pod is not policed");
    assert!(
        !connects(&bed, NEWCOMER, SERVER),
        "an unknown address reached a pod; daemon log:\n{}",
        bed.daemon_log()
    );
    bed.apply_objects(&objects(&[CLIENT, SERVER, NEWCOMER]))
        .expect("apply");
    assert!(
        connects(&bed, NEWCOMER, SERVER),
        "the newcomer is known now"
    );
    // And it goes away again with its Pod object.
    bed.apply_objects(&objects(&[CLIENT, SERVER]))
        .expect("apply");
    assert!(!connects(&bed, NEWCOMER, SERVER), "deleted pod still known");
}

#[test]
fn without_the_flag_an_unknown_pod_address_is_not_policed() {
    let Some(mut bed) = testbed(&[]) else {
        return;
    };
    bed.apply_objects(&objects(&[CLIENT, SERVER]))
        .expect("apply");
    assert!(connects(&bed, NEWCOMER, SERVER));
}
