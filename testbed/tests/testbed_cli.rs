//! `nftpol-testbed probe` end to end: on the demo manifests, what the real kernel lets through
//! (under the real `nftpol run`) must equal what `nftpol simulate` predicts, off the diagonal,
//! on bridged and routed nodes. Also: setup failures exit non-zero.
//!
//! The kernel part needs root and nft; it skips otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nftpol_testbed::daemon::{BIN_ENV, find_binary};
use nftpol_testbed::{Matrix, netns};

const TESTBED: &str = env!("CARGO_BIN_EXE_nftpol-testbed");

/// The `nftpol` binary: `$NFTPOL_BIN`, else the one cargo built next to this test (another
/// package's binary has no `CARGO_BIN_EXE_*`). `cargo test` at the workspace root builds it.
fn nftpol_bin() -> PathBuf {
    find_binary().expect("the nftpol binary")
}

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo")
}

fn skip_reason() -> Option<&'static str> {
    if !netns::available() {
        return Some("needs root and iproute2");
    }
    None
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn probed_matrices_equal_simulate_on_the_demo() {
    if let Some(why) = skip_reason() {
        panic!("cannot run: {why} (run as root, as hack/test.sh does)");
    }
    let demo = demo();
    for mode in ["bridge", "routed"] {
        for (port, protocol) in [("8080", "TCP"), ("53", "UDP"), ("5432", "TCP")] {
            let probed = run(Command::new(TESTBED)
                .env(BIN_ENV, nftpol_bin())
                .args(["probe", "-f"])
                .arg(&demo)
                .args(["--port", port, "--protocol", protocol, "--mode", mode]));
            let simulated = run(Command::new(nftpol_bin())
                .args(["simulate", "-f"])
                .arg(&demo)
                .args(["--port", port, "--protocol", protocol, "-o", "json"]));
            let probed: Matrix = serde_json::from_slice(&probed.stdout).expect("probe JSON");
            let simulated: Matrix =
                serde_json::from_slice(&simulated.stdout).expect("simulate JSON");
            assert_eq!(probed.pods, simulated.pods, "{mode} {port}/{protocol}");
            assert_eq!(probed.port.to_string(), port);
            let bad = nftpol_testbed::diff_off_diagonal(&probed, &simulated.allowed);
            assert!(
                bad.is_empty(),
                "{mode} {port}/{protocol}: the kernel differs from simulate:\n{}\nprobed:\n{}",
                bad.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
                probed.to_table()
            );
        }
    }
}

#[test]
fn setup_failures_exit_non_zero() {
    let dir = std::env::temp_dir().join(format!("nftpol-tb-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    // No pod with an address: nothing to put on the testbed.
    std::fs::write(
        dir.join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
    )
    .expect("write");
    let out = Command::new(TESTBED)
        .args(["probe", "-f"])
        .arg(&dir)
        .args(["--port", "80"])
        .output()
        .expect("spawn");
    // Broken YAML.
    std::fs::write(dir.join("bad.yaml"), "kind: [unclosed\n").expect("write");
    let bad = Command::new(TESTBED)
        .args(["probe", "-f"])
        .arg(&dir)
        .args(["--port", "80"])
        .output()
        .expect("spawn");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no pod with an address"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad.yaml"));
}
