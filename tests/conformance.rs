//! Every case of the upstream conformance corpus, and of nftpol's own cases in the same format,
//! through the policy compiler: each probe matrix (65 upstream) must match off the diagonal
//! (upstream ignores self traffic).
//!
//! The cases are read through the same manifest path as user input (`manifest::load_values`),
//! and each step is judged twice: by a full compile and by the incremental compiler fed the
//! same changes, which must agree.

mod corpus;

use nftpol::cli::simulate::Matrix;
use nftpol::policy::compile::{Compiler, Scope, compile};
use nftpol::policy::index::ClusterIndex;
use nftpol::policy::model::Protocol;
use nftpol::source::manifest;

fn index_for(state: &corpus::State) -> ClusterIndex {
    let loaded = manifest::load_values("corpus", state.manifests(None)).expect("corpus loads");
    assert!(loaded.invalid.is_empty(), "invalid: {:?}", loaded.invalid);
    ClusterIndex::from_state(&loaded.state)
}

/// Feeds the difference between two indexes to an incremental compiler, object by object.
fn replay(compiler: &mut Compiler, old: &ClusterIndex, new: &ClusterIndex) {
    // Apply changes onto a working copy of the old index, telling the compiler each time.
    let mut work = old.clone();
    for ns in new.namespaces() {
        if old.namespace(&ns.name) != Some(ns) {
            let prev = work.upsert_namespace(ns.clone());
            compiler.namespace_changed(&work, prev.as_ref(), Some(ns));
        }
    }
    for pod in new.pods() {
        if old.pod(&pod.key) != Some(pod) {
            let prev = work.upsert_pod(pod.clone());
            compiler.pod_changed(&work, prev.as_ref(), Some(pod));
        }
    }
    let gone: Vec<_> = old
        .pods()
        .filter(|p| new.pod(&p.key).is_none())
        .map(|p| p.key.clone())
        .collect();
    for key in gone {
        let prev = work.remove_pod(&key);
        compiler.pod_changed(&work, prev.as_ref(), None);
    }
    for policy in new.policies() {
        if old.policy(&policy.key) != Some(policy) {
            work.upsert_policy(policy.clone());
            compiler.policy_changed(&work, &policy.key);
        }
    }
    let gone: Vec<_> = old
        .policies()
        .filter(|p| new.policy(&p.key).is_none())
        .map(|p| p.key.clone())
        .collect();
    for key in gone {
        work.remove_policy(&key);
        compiler.policy_changed(&work, &key);
    }
    let cluster_changed = new
        .cluster_policies()
        .any(|p| old.cluster_policy(&p.key) != Some(p))
        || old
            .cluster_policies()
            .any(|p| new.cluster_policy(&p.key).is_none());
    if cluster_changed {
        for p in new.cluster_policies() {
            work.upsert_cluster_policy(p.clone());
        }
        let gone: Vec<_> = old
            .cluster_policies()
            .filter(|p| new.cluster_policy(&p.key).is_none())
            .map(|p| p.key.clone())
            .collect();
        for key in gone {
            work.remove_cluster_policy(&key);
        }
        compiler.cluster_policies_changed(&work);
    }
}

/// Judges every step's probes of `cases`: the number of probe matrices, and one line per
/// matrix that differs off the diagonal.
fn judge_cases(model: &corpus::Model, cases: &[corpus::Case]) -> (usize, Vec<String>) {
    let mut probes = 0;
    let mut failures = Vec::new();
    for case in cases {
        let mut state = corpus::State::new(model, case);
        let mut prev_index = index_for(&state);
        let mut incremental = Compiler::new(Scope::Cluster);
        incremental.full(&prev_index);
        for (si, step) in case.steps.iter().enumerate() {
            state.apply(step);
            let index = index_for(&state);
            let plan = compile(&index, &Scope::Cluster);
            replay(&mut incremental, &prev_index, &index);
            assert_eq!(
                incremental.plan(),
                &plan,
                "{} step {si}: incremental compile differs from a full compile",
                case.id
            );
            for probe in &step.probes {
                probes += 1;
                let protocol: Protocol = probe.protocol.parse().expect("protocol");
                let got = Matrix::predict(&plan, probe.port, protocol);
                assert_eq!(
                    got.pods,
                    model
                        .pod_order
                        .iter()
                        .cloned()
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect::<Vec<_>>()
                );
                let bad = corpus::mismatches(&probe.expect, &got.allowed);
                if !bad.is_empty() {
                    failures.push(format!(
                        "{} step {si} ({}) probe {}/{}:\n  {}",
                        case.id,
                        step.description,
                        probe.port,
                        probe.protocol,
                        bad.join("\n  ")
                    ));
                }
            }
            prev_index = index;
        }
    }
    (probes, failures)
}

#[test]
fn upstream_corpus_matches_off_the_diagonal() {
    let model = corpus::load_model();
    let cases = corpus::load_cases();
    assert_eq!(cases.len(), 48, "the corpus has 48 upstream cases");
    let (probes, failures) = judge_cases(&model, &cases);
    assert_eq!(probes, 65, "the corpus has 65 probe matrices");
    assert!(
        failures.is_empty(),
        "{} of 65 matrices differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn own_cases_match_off_the_diagonal() {
    let model = corpus::load_model();
    let cases = corpus::load_own_cases();
    assert!(!cases.is_empty(), "tests/conformance/nftpol has cases");
    let (probes, failures) = judge_cases(&model, &cases);
    assert!(
        failures.is_empty(),
        "{} of {probes} matrices differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
