//! Manifests for the testbed's daemon: reading user manifests as JSON documents, placing pods
//! on the testbed node (`spec.nodeName`), and keeping a watched folder in sync with a list of
//! objects, one file per object, written atomically.
//!
//! Also a temporary folder that is removed on drop and on signals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::cleanup;

/// A temporary folder (`$TMPDIR/nftpol-tb-<pid>-<n>`), removed with its content on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "{}-{}-{n}",
            super::netns::NAME_PREFIX,
            std::process::id()
        ));
        cleanup::register_dir(&path);
        if let Err(e) = std::fs::create_dir_all(&path) {
            cleanup::unregister_dir(&path);
            return Err(e).with_context(|| format!("creating {}", path.display()));
        }
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        cleanup::unregister_dir(&self.path);
    }
}

/// Reads every object from manifest files and folders (the files `nftpol` itself would read),
/// with `kind: List` flattened.
pub fn read_objects(paths: &[PathBuf]) -> Result<Vec<Value>> {
    let files = nftpol::source::manifest::files(paths)?;
    if files.is_empty() {
        bail!("no manifest files (.yaml, .yml, .json) in the given paths");
    }
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let docs: Vec<Value> = if path.extension().and_then(|e| e.to_str()) == Some("json") {
            vec![
                serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?,
            ]
        } else {
            let mut docs = Vec::new();
            for doc in serde_norway::Deserializer::from_str(&text) {
                let v: Value = serde::Deserialize::deserialize(doc)
                    .with_context(|| format!("parsing {}", path.display()))?;
                if !v.is_null() {
                    docs.push(v);
                }
            }
            docs
        };
        for doc in docs {
            flatten(doc, &mut out);
        }
    }
    Ok(out)
}

fn flatten(doc: Value, out: &mut Vec<Value>) {
    if doc.get("kind").and_then(Value::as_str) == Some("List")
        && let Some(Value::Array(items)) = doc.get("items")
    {
        for item in items.clone() {
            flatten(item, out);
        }
        return;
    }
    out.push(doc);
}

/// Sets `spec.nodeName` of every Pod that has an address and is not hostNetwork, so the daemon
/// of the testbed node enforces it. Returns how many pods were placed.
pub fn place_pods(objects: &mut [Value], node: &str) -> usize {
    let mut placed = 0;
    for obj in objects.iter_mut() {
        if obj.get("kind").and_then(Value::as_str) != Some("Pod") {
            continue;
        }
        let host_network = obj
            .pointer("/spec/hostNetwork")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let has_ip = obj.pointer("/status/podIP").is_some_and(|v| !v.is_null())
            || obj
                .pointer("/status/podIPs")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
        if host_network || !has_ip {
            continue;
        }
        if let Some(map) = obj.as_object_mut() {
            let spec = map
                .entry("spec")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(spec) = spec.as_object_mut() {
                spec.insert("nodeName".into(), Value::String(node.into()));
                placed += 1;
            }
        }
    }
    placed
}

/// A file name for an object: `<kind>-<namespace>-<name>.json`, lower case, sanitized.
fn file_name(obj: &Value) -> String {
    let field = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or("");
    let raw = format!(
        "{}-{}-{}",
        field("/kind"),
        field("/metadata/namespace"),
        field("/metadata/name")
    );
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    clean.trim_start_matches('.').to_owned()
}

/// Makes `dir` hold exactly `objects`, one JSON file each. Unchanged files are left alone,
/// changed ones are replaced atomically (a hidden temporary, which `nftpol` ignores, renamed
/// into place), and files of objects that are gone are removed.
pub fn sync_dir(dir: &Path, objects: &[Value]) -> Result<()> {
    let mut wanted: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for obj in objects {
        let base = file_name(obj);
        let mut name = format!("{base}.json");
        let mut i = 1;
        while wanted.contains_key(&name) {
            i += 1;
            name = format!("{base}-{i}.json");
        }
        let mut bytes = serde_json::to_vec_pretty(obj).context("serializing a manifest")?;
        bytes.push(b'\n');
        wanted.insert(name, bytes);
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !wanted.contains_key(&name) && entry.path().is_file() {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    for (name, bytes) in &wanted {
        let path = dir.join(name);
        if std::fs::read(&path).is_ok_and(|old| &old == bytes) {
            continue;
        }
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_with_addresses_are_placed_and_dir_sync_is_exact() {
        let mut objs = vec![
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "x", "name": "a"},
                   "spec": {"containers": []}, "status": {"podIP": "10.0.0.1"}}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "x", "name": "h"},
                   "spec": {"hostNetwork": true}, "status": {"podIP": "10.0.0.2"}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}),
        ];
        assert_eq!(place_pods(&mut objs, "n1"), 1);
        assert_eq!(objs[0].pointer("/spec/nodeName"), Some(&json!("n1")));
        assert_eq!(objs[1].pointer("/spec/nodeName"), None);

        let dir = TempDir::new().expect("tempdir");
        sync_dir(dir.path(), &objs).expect("sync");
        std::fs::write(dir.path().join("stale.yaml"), "x").expect("write");
        sync_dir(dir.path(), &objs[..1]).expect("sync");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["pod-x-a.json".to_owned()]);
        let back = read_objects(&[dir.path().to_owned()]).expect("read");
        assert_eq!(back, objs[..1].to_vec());
        let path = dir.path().to_owned();
        drop(dir);
        assert!(!path.exists());
    }
}
