//! The HTML pages in a real browser (headless Chromium, Debian's `chromium`, driven over the
//! DevTools protocol): the reachability page of `simulate -o html` shows what `simulate -o json`
//! predicts and what `explain` says, its namespaces collapse and expand, its filters choose the
//! probes; the flow page of `flows -o html` counts what the lines say. Fails when Chromium is
//! missing.
//!
//! Screenshots go to `target/tmp/browser/`; with `NFTPOL_SCREENSHOTS=DIR` also to DIR (the
//! README's are made so: `NFTPOL_SCREENSHOTS=docs/images cargo test --test browser`).

#[path = "browser/cdp.rs"]
mod cdp;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use cdp::Browser;
use nftpol::cli::simulate::Matrix;
use serde_json::{Value, json};

/// Runs in `dir` (the repository by default), so the page names relative paths.
fn nftpol_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_nftpol"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run nftpol");
    assert!(
        out.status.success(),
        "nftpol {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn nftpol(args: &[&str]) -> String {
    nftpol_in(Path::new(env!("CARGO_MANIFEST_DIR")), args)
}

fn demo() -> String {
    "examples/demo".to_string()
}

/// A scratch folder of this test, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("browser-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn screenshot(b: &mut Browser, name: &str, max_height: u32) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    b.screenshot(&dir.join(name), max_height);
    if let Some(extra) = std::env::var_os("NFTPOL_SCREENSHOTS") {
        std::fs::create_dir_all(&extra).unwrap();
        std::fs::copy(dir.join(name), Path::new(&extra).join(name)).unwrap();
    }
}

/// Every pod-to-pod cell the page shows: (from, to) -> `data-state`.
fn cells(b: &mut Browser) -> BTreeMap<(String, String), String> {
    let v = b.eval(
        "[...document.querySelectorAll('#matrix td.cell')]\
         .map(td => [td.dataset.from, td.dataset.to, td.dataset.state])",
    );
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                (c[0].as_str().unwrap().into(), c[1].as_str().unwrap().into()),
                c[2].as_str().unwrap().into(),
            )
        })
        .collect()
}

/// What a cell must show for one probe's matrix.
fn expected(m: &Matrix) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for from in &m.pods {
        for to in &m.pods {
            let state = if from == to {
                "self"
            } else if m.allowed[from][to] {
                "allowed"
            } else {
                "denied"
            };
            out.insert((from.clone(), to.clone()), state.to_string());
        }
    }
    out
}

fn ns(pod: &str) -> &str {
    pod.split('/').next().unwrap()
}

#[test]
fn the_reachability_page_shows_what_simulate_and_explain_say() {
    let scratch = Scratch::new("matrix");
    let demo = demo();
    let page = scratch.0.join("reachability.html");
    std::fs::write(
        &page,
        nftpol(&[
            "simulate", "-f", &demo, "--port", "8080", "--port", "5432", "--port", "53/UDP", "-o",
            "html",
        ]),
    )
    .unwrap();
    let m8080: Matrix = serde_json::from_str(&nftpol(&[
        "simulate", "-f", &demo, "--port", "8080", "-o", "json",
    ]))
    .unwrap();
    let m5432: Matrix = serde_json::from_str(&nftpol(&[
        "simulate", "-f", &demo, "--port", "5432", "-o", "json",
    ]))
    .unwrap();
    let both: Vec<Matrix> = serde_json::from_str(&nftpol(&[
        "simulate",
        "-f",
        &demo,
        "--port",
        "8080,5432",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(both, [m8080.clone(), m5432.clone()]);
    let m53: Matrix = serde_json::from_str(&nftpol(&[
        "simulate",
        "-f",
        &demo,
        "--port",
        "53",
        "--protocol",
        "UDP",
        "-o",
        "json",
    ]))
    .unwrap();

    let mut b = Browser::start(1100, 900);
    b.open(&page);
    assert_eq!(b.eval("document.scripts.length"), json!(2));

    // Each port alone: every cell as simulate -o json predicts it.
    for m in [&m8080, &m5432] {
        b.click(&format!(
            "button.filter[data-kind=port][data-value='{}']",
            m.port
        ));
        b.wait_for(&format!(
            "document.getElementById('shown').textContent.includes('{}/TCP')",
            m.port
        ));
        let shown = cells(&mut b);
        assert_eq!(shown.len(), m.pods.len() * m.pods.len());
        assert_eq!(shown, expected(m), "port {}", m.port);
    }
    // A protocol alone: its one probe.
    b.click("button.filter[data-kind=port][data-value=all]");
    b.click("button.filter[data-kind=protocol][data-value=UDP]");
    b.wait_for("document.getElementById('shown').textContent === 'Shown: 53/UDP'");
    assert_eq!(cells(&mut b), expected(&m53));
    // Both TCP ports: a pair allowed on one only counts 1 of 2.
    b.click("button.filter[data-kind=protocol][data-value=TCP]");
    b.wait_for("document.getElementById('shown').textContent.includes('8080/TCP, 5432/TCP')");
    let shown = cells(&mut b);
    let (e1, e2) = (expected(&m8080), expected(&m5432));
    for (pair, state) in &shown {
        let want = if e1[pair] == e2[pair] {
            e1[pair].as_str()
        } else {
            "mixed"
        };
        assert_eq!(state, want, "{pair:?}");
    }
    assert!(
        shown.values().any(|s| s == "mixed"),
        "the demo has pairs allowed on one port only"
    );

    // The namespace summary lists, per namespace pair, the ports some pod pair may use.
    let summary = b.eval(
        "Object.fromEntries([...document.querySelectorAll('#summary td')]\
         .map(td => [td.dataset.fromNs + ' ' + td.dataset.toNs, td.textContent]))",
    );
    let namespaces: Vec<&str> = {
        let mut v: Vec<&str> = m8080.pods.iter().map(|p| ns(p)).collect();
        v.dedup();
        v
    };
    for a in &namespaces {
        for z in &namespaces {
            let mut parts = Vec::new();
            let mut pairs = 0;
            for m in [&m8080, &m5432] {
                let (mut allowed, mut total) = (0, 0);
                for from in m.pods.iter().filter(|p| ns(p) == *a) {
                    for to in m.pods.iter().filter(|p| ns(p) == *z && *p != from) {
                        total += 1;
                        allowed += usize::from(m.allowed[from][to]);
                    }
                }
                pairs = total;
                if allowed == total && allowed > 0 {
                    parts.push(format!("{}/TCP", m.port));
                } else if allowed > 0 {
                    parts.push(format!("{}/TCP ({allowed}/{total} pairs)", m.port));
                }
            }
            let want = match (pairs, parts.is_empty()) {
                (0, _) => "-".to_string(),
                (_, true) => "none".to_string(),
                _ => parts.join(", "),
            };
            assert_eq!(summary[format!("{a} {z}")], json!(want), "{a} -> {z}");
        }
    }

    // Collapse a namespace: its pods become one row and one column; expand it again.
    let production = m8080.pods.iter().filter(|p| ns(p) == "production").count();
    assert!(production > 1);
    let rows = "document.querySelectorAll('#matrix tbody tr[data-row^=\"production/\"]').length";
    assert_eq!(b.eval(rows), json!(production));
    b.click("#matrix thead button.ns-toggle[data-ns=production]");
    b.wait_for("document.querySelector('#matrix tr[data-row=\"ns:production\"]')");
    assert_eq!(b.eval(rows), json!(0));
    b.click("#matrix thead button.ns-toggle[data-ns=production]");
    b.wait_for(&format!("{rows} === {production}"));
    assert_eq!(
        b.eval("document.querySelectorAll('#matrix tr[data-row=\"ns:production\"]').length"),
        json!(0)
    );

    // Click a denied cell on 8080: the page says what `nftpol explain` says.
    b.click("button.filter[data-kind=port][data-value='8080']");
    b.wait_for("document.getElementById('shown').textContent === 'Shown: 8080/TCP'");
    let (from, to) = expected(&m8080)
        .into_iter()
        .find(|((f, t), s)| {
            s == "denied" && f.starts_with("staging/") && t.starts_with("production/")
        })
        .map(|(pair, _)| pair)
        .expect("the demo denies the stranger something");
    b.click(&format!(
        "#matrix td.cell[data-from='{from}'][data-to='{to}']"
    ));
    b.wait_for("document.querySelector('#explain pre')");
    let words = b.eval("document.querySelector('#explain pre').textContent");
    let explain = nftpol(&[
        "explain", "-f", &demo, "--from", &from, "--to", &to, "--port", "8080",
    ]);
    assert!(explain.contains("DENIED"), "{explain}");
    assert_eq!(words, json!(explain));
    assert_eq!(
        b.eval("document.querySelector('#explain pre').dataset.probe"),
        json!("8080/TCP")
    );
    screenshot(&mut b, "reachability.png", 1200);
}

#[test]
fn names_are_text_not_markup() {
    let scratch = Scratch::new("escape");
    // The source (file names) is shown on the page; a name with markup stays text.
    let dir = scratch.0.join("<script>alert(1)<!--");
    std::fs::create_dir_all(&dir).unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join(demo());
    for f in std::fs::read_dir(demo).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    let page = scratch.0.join("page.html");
    let dir_text = dir.display().to_string();
    std::fs::write(
        &page,
        nftpol(&["simulate", "-f", &dir_text, "--port", "80", "-o", "html"]),
    )
    .unwrap();
    let mut b = Browser::start(800, 600);
    b.open(&page);
    assert_eq!(b.eval("document.scripts.length"), json!(2));
    let source: Value = b.eval("document.querySelector('.source').textContent");
    assert!(source.as_str().unwrap().contains(&dir_text), "{source}");
    let title = b.eval("document.title");
    assert!(title.as_str().unwrap().contains(&dir_text), "{title}");
}

#[test]
fn the_flow_page_counts_lines_per_pair_and_policy_newest_first() {
    let scratch = Scratch::new("flows");
    let line = |time: &str, action: &str, src: &str, policies: &str| {
        let ip = format!("10.244.1.{}", src.len());
        let words = match action {
            "allow" => format!("allowed by ingress rule {policies}"),
            _ => format!(
                "dropped: isolated for ingress by {policies}, and no ingress rule of it allows it"
            ),
        };
        format!(
            "{time}  INFO nftpol::flow: TCP {action} {src} ({ip}) -> production/api (10.244.2.21:8080): {words} action=\"{action}\" direction=\"ingress\" src={ip} src_pod=\"{src}\" dst=10.244.2.21 dst_pod=\"production/api\" protocol=TCP port=8080 pod=\"production/api\" policies={policies}\n"
        )
    };
    let log = [
        line(
            "2026-11-22T02:10:01.000000Z",
            "drop",
            "staging/stranger",
            "production/default-deny-all",
        ),
        "2026-11-22T02:10:01.500000Z  INFO nftpol::engine: applied generation 3\n".to_string(),
        line(
            "2026-11-22T02:10:02.000000Z",
            "allow",
            "production/frontend",
            "production/api#0",
        ),
        line(
            "2026-11-22T02:10:03.000000Z",
            "drop",
            "staging/stranger",
            "production/default-deny-all",
        ),
        line(
            "2026-11-22T02:10:04.000000Z",
            "drop",
            "monitoring/grafana",
            "production/default-deny-all",
        ),
    ]
    .concat();
    let file = scratch.0.join("flows.log");
    std::fs::write(&file, log).unwrap();
    let page = scratch.0.join("flows.html");
    std::fs::write(
        &page,
        nftpol_in(&scratch.0, &["flows", "-o", "html", "flows.log"]),
    )
    .unwrap();

    let mut b = Browser::start(1400, 500);
    b.open(&page);
    let groups = "[...document.querySelectorAll('#groups tbody tr')].map(tr => [...tr.cells].map(td => td.textContent))";
    let g = b.eval(groups);
    let g = g.as_array().unwrap();
    assert_eq!(g.len(), 3, "{g:?}");
    // Most recently seen first: grafana (02:10:04), then the stranger's two, then the allow.
    assert_eq!(g[0][0], json!("1"));
    assert_eq!(g[0][3], json!("monitoring/grafana"));
    assert_eq!(g[1][0], json!("2"));
    assert_eq!(g[1][3], json!("staging/stranger"));
    assert_eq!(g[1][7], json!("production/default-deny-all"));
    assert_eq!(g[2][1], json!("allow"));
    let first_line = b.eval("document.querySelector('#lines tbody tr td').textContent");
    assert_eq!(first_line, json!("2026-11-22T02:10:04.000000Z"));
    assert!(
        b.eval("document.querySelector('.source').textContent")
            .as_str()
            .unwrap()
            .contains("other lines skipped: 1")
    );
    screenshot(&mut b, "flows.png", 700);

    b.click("button.filter[data-kind=action][data-value=allow]");
    b.wait_for("document.querySelectorAll('#groups tbody tr').length === 1");
    assert_eq!(
        b.eval("document.querySelector('#groups tbody tr td.action').textContent"),
        json!("allow")
    );
    assert_eq!(
        b.eval("document.querySelectorAll('#lines tbody tr').length"),
        json!(1)
    );
}
