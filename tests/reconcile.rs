//! The reconciler fed as the API source feeds it: initial lists, then per-object changes, then
//! relists (as after an outage or a 410 Gone). On every step of every upstream corpus case its
//! incremental plan must equal a full compile of the same state, and a full resync must find
//! nothing to fix.

mod corpus;

use nftpol::engine::reconcile::Reconciler;
use nftpol::policy::compile::{Scope, compile};
use nftpol::policy::index::ClusterIndex;
use nftpol::policy::model::ClusterState;
use nftpol::source::manifest;
use nftpol::source::{Change, Listing, Update};

const NODE: &str = "node-1";

fn state_of(state: &corpus::State) -> ClusterState {
    let mut objects = state.manifests(None);
    // Put x's and y's pods on this node and z's elsewhere: remote peers matter too.
    for o in &mut objects {
        if o["kind"] == "Pod" {
            let node = if o["metadata"]["namespace"] == "z" {
                "node-2"
            } else {
                NODE
            };
            o["spec"]["nodeName"] = node.into();
        }
    }
    manifest::load_values("corpus", objects)
        .expect("loads")
        .state
}

fn relist(r: &mut Reconciler, s: &ClusterState) {
    r.apply(Update::Namespace(Change::Relisted(
        s.namespaces.clone().into(),
    )));
    r.apply(Update::Pod(Change::Relisted(s.pods.clone().into())));
    r.apply(Update::Policy(Change::Relisted(s.policies.clone().into())));
}

/// The per-object updates a watch would deliver between two states.
fn changes(old: &ClusterState, new: &ClusterState) -> Vec<Update> {
    let mut out = Vec::new();
    for ns in &new.namespaces {
        if !old.namespaces.contains(ns) {
            out.push(Update::Namespace(Change::Applied(ns.clone())));
        }
    }
    for pod in &new.pods {
        if !old.pods.contains(pod) {
            out.push(Update::Pod(Change::Applied(pod.clone())));
        }
    }
    for pod in &old.pods {
        if !new.pods.iter().any(|p| p.key == pod.key) {
            out.push(Update::Pod(Change::Deleted(pod.key.clone())));
        }
    }
    for p in &new.policies {
        if !old.policies.contains(p) {
            out.push(Update::Policy(Change::Applied(p.clone())));
        }
    }
    for p in &old.policies {
        if !new.policies.iter().any(|q| q.key == p.key) {
            out.push(Update::Policy(Change::Deleted(p.key.clone())));
        }
    }
    out
}

/// Feeds `r` the watch events that lead from `old` to `new`.
fn watch(r: &mut Reconciler, old: &ClusterState, new: &ClusterState) {
    for u in changes(old, new) {
        r.apply(u);
    }
}

fn expected(s: &ClusterState) -> nftpol::policy::compile::NodePlan {
    compile(&ClusterIndex::from_state(s), &Scope::Node(NODE.into()))
}

#[test]
fn not_ready_until_every_kind_is_listed() {
    let model = corpus::load_model();
    let case = &corpus::load_cases()[0];
    let s = state_of(&corpus::State::new(&model, case));
    let mut r = Reconciler::new(NODE);
    r.apply(Update::Namespace(Change::Relisted(
        s.namespaces.clone().into(),
    )));
    r.apply(Update::Pod(Change::Relisted(s.pods.clone().into())));
    assert!(!r.ready());
    assert!(r.plan().endpoints.is_empty());
    r.apply(Update::Policy(Change::Relisted(s.policies.clone().into())));
    assert!(r.ready());
    assert!(r.take_dirty());
    assert_eq!(r.plan(), &expected(&s));
    assert_eq!(r.plan().endpoints.len(), 6, "x and y pods are local");
}

#[test]
fn incremental_updates_and_relists_match_full_compiles_on_the_corpus() {
    let model = corpus::load_model();
    for case in corpus::load_cases() {
        let mut state = corpus::State::new(&model, &case);
        let mut prev = state_of(&state);
        let mut r = Reconciler::new(NODE);
        relist(&mut r, &prev);
        for (i, step) in case.steps.iter().enumerate() {
            state.apply(step);
            let next = state_of(&state);
            // Alternate: per-object watch events, or a relist as after an outage.
            if i % 2 == 0 {
                watch(&mut r, &prev, &next);
            } else {
                relist(&mut r, &next);
            }
            assert_eq!(r.plan(), &expected(&next), "{} step {i}", case.id);
            assert_eq!(
                r.full_resync(),
                0,
                "{} step {i}: resync fixed something",
                case.id
            );
            prev = next;
        }
    }
}

/// The corpus case with a default-deny ingress policy in namespace x, after its first step.
fn default_deny_ingress() -> ClusterState {
    let model = corpus::load_model();
    let cases = corpus::load_cases();
    let case = cases
        .iter()
        .find(|c| c.id == "should-support-a-default-deny-ingress-policy")
        .expect("case");
    let mut state = corpus::State::new(&model, case);
    state.apply(&case.steps[0]);
    state_of(&state)
}

#[test]
fn deletions_during_an_outage_are_applied_by_the_relist() {
    let before = default_deny_ingress();
    let mut r = Reconciler::new(NODE);
    relist(&mut r, &before);
    assert!(r.plan().isolated().count() > 0);
    r.take_dirty();
    // While the watch was down: every policy and pod x/a were deleted.
    let mut after = before.clone();
    after.policies.clear();
    after.pods.retain(|p| p.key.to_string() != "x/a");
    relist(&mut r, &after);
    assert!(r.take_dirty());
    assert_eq!(r.plan().isolated().count(), 0);
    assert!(r.plan().endpoints.keys().all(|k| k.to_string() != "x/a"));
    assert_eq!(r.plan(), &expected(&after));
    // The same relist again changes nothing.
    relist(&mut r, &after);
    assert!(!r.take_dirty());
}

/// A relist that names objects as present but not converting (the source lists their keys)
/// keeps their last valid versions: nothing opens. Absent from a later relist, they go.
#[test]
fn a_relist_keeps_the_last_valid_version_of_objects_that_do_not_convert() {
    let before = default_deny_ingress();
    let mut r = Reconciler::new(NODE);
    relist(&mut r, &before);
    let plan = r.plan().clone();
    assert!(plan.isolated().count() > 0);
    r.take_dirty();

    fn invalid<T, K>(keys: Vec<K>) -> Listing<T, K> {
        Listing {
            objects: vec![],
            invalid: keys,
        }
    }
    r.apply(Update::Namespace(Change::Relisted(invalid(
        before.namespaces.iter().map(|n| n.name.clone()).collect(),
    ))));
    r.apply(Update::Pod(Change::Relisted(invalid(
        before.pods.iter().map(|p| p.key.clone()).collect(),
    ))));
    r.apply(Update::Policy(Change::Relisted(invalid(
        before.policies.iter().map(|p| p.key.clone()).collect(),
    ))));
    assert!(!r.take_dirty());
    assert_eq!(r.plan(), &plan);
    assert_eq!(r.full_resync(), 0);

    // The policies come back valid, pod x/a is invalid and every other object is gone.
    let mut after = before.clone();
    after.pods.retain(|p| p.key.to_string() == "x/a");
    r.apply(Update::Pod(Change::Relisted(invalid(
        after.pods.iter().map(|p| p.key.clone()).collect(),
    ))));
    r.apply(Update::Policy(Change::Relisted(
        after.policies.clone().into(),
    )));
    assert!(r.take_dirty());
    assert_eq!(r.plan(), &expected(&after));
    assert!(r.plan().endpoints.keys().any(|k| k.to_string() == "x/a"));
    assert_eq!(r.full_resync(), 0);

    // Absent from a relist: deleted, whatever was said of it before.
    after.pods.clear();
    r.apply(Update::Pod(Change::Relisted(vec![].into())));
    assert!(r.take_dirty());
    assert!(r.plan().endpoints.is_empty());
    assert_eq!(r.plan(), &expected(&after));
}

#[test]
fn a_namespace_entering_and_leaving_audit_mode_changes_only_its_pods() {
    let enforced = default_deny_ingress();
    let mut r = Reconciler::new(NODE);
    relist(&mut r, &enforced);
    r.take_dirty();
    assert!(r.plan().endpoints.values().all(|e| !e.audit));

    // The annotation arrives as a watch event on namespace x.
    let mut audited = enforced.clone();
    for ns in &mut audited.namespaces {
        ns.audit = ns.name == "x";
    }
    watch(&mut r, &enforced, &audited);
    assert!(r.take_dirty());
    assert_eq!(r.plan(), &expected(&audited));
    let audit: Vec<String> = r
        .plan()
        .endpoints
        .values()
        .filter(|e| e.audit)
        .map(|e| e.pod.to_string())
        .collect();
    assert_eq!(audit, ["x/a", "x/b", "x/c"]);
    assert_eq!(r.full_resync(), 0);

    // And leaves.
    watch(&mut r, &audited, &enforced);
    assert!(r.take_dirty());
    assert_eq!(r.plan(), &expected(&enforced));
    assert!(r.plan().endpoints.values().all(|e| !e.audit));
}
