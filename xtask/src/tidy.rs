//! `cargo xtask tidy`: checks of the repository itself, read from
//! `cargo metadata` and the sources, in the manner of rust-analyzer's
//! `xtask/src/tidy.rs`. The `tidy` test below runs the same checks, so plain
//! `cargo test` / `cargo nextest run --workspace` catches drift too.
//!
//! What is checked:
//! - **Layering.** `jobqueue-core`'s dependency tree (normal and build edges,
//!   transitively, all features; dev-dependencies excluded) holds no async
//!   runtime, database or HTTP crate (see [`FORBIDDEN_IN_CORE`]).
//! - **Module docs.** Every `.rs` file under `crates/`, `xtask/` and `tests/`
//!   opens with a `//!` doc (plain `//` comments may come first). Exempt:
//!   `build.rs`, files under `benches/` and `examples/` (examples carry their
//!   "Run with" line in a doc by convention, but tidy does not insist), and
//!   generated files (first line mentions `@generated`), whose content belongs
//!   to their generator. Integration-test files and their helper modules are
//!   included: a helper module deserves a line saying what it is for.
//! - **No skipped tests.** No ignore or should-panic attribute on a test, and
//!   no doctest fenced as ignore or should-panic, in any `.rs` file.
//! - **Manifests.** Every workspace member takes `version` and `edition` from
//!   the workspace and has `[lints] workspace = true`; members live at
//!   `crates/<package-name>/`, `xtask/` or `tests/`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::util::{capture, cargo, project_root, read_file, rel};

/// Crates that must not appear in `jobqueue-core`'s dependency tree.
const FORBIDDEN_IN_CORE: &[&str] = &["tokio", "diesel", "hyper", "libsqlite3-sys"];

/// The package whose dependency tree is checked.
const CORE: &str = "jobqueue-core";

/// Top-level directories whose Rust files are checked.
const SOURCE_DIRS: &[&str] = &["crates", "xtask", "tests"];

pub(crate) fn run() -> Result<()> {
    let problems = check_all()?;
    if problems.is_empty() {
        eprintln!("tidy: ok");
        return Ok(());
    }
    for p in &problems {
        eprintln!("tidy: {p}");
    }
    bail!("tidy found {} problem(s)", problems.len())
}

/// Runs every check; each problem is one line naming where it is.
pub(crate) fn check_all() -> Result<Vec<String>> {
    let metadata = cargo_metadata()?;
    let mut problems = layering(&metadata)?;
    problems.extend(manifests(&metadata)?);
    let files = rust_files()?;
    for file in &files {
        let text = read_file(file)?;
        let name = rel(file);
        if needs_module_doc(file) {
            problems.extend(module_doc(&name, &text));
        }
        problems.extend(skipped_tests(&name, &text));
    }
    Ok(problems)
}

fn cargo_metadata() -> Result<Value> {
    let out = capture(cargo().args(["metadata", "--format-version", "1", "--all-features"]))?;
    serde_json::from_str(&out).context("could not parse `cargo metadata` output")
}

/// Checks that no forbidden crate is reachable from `jobqueue-core` over
/// normal or build edges. Each problem names the path that pulls it in.
fn layering(metadata: &Value) -> Result<Vec<String>> {
    let packages = metadata["packages"]
        .as_array()
        .context("cargo metadata: no `packages`")?;
    let name_of: HashMap<&str, &str> = packages
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
        .collect();
    let members: HashSet<&str> = metadata["workspace_members"]
        .as_array()
        .context("cargo metadata: no `workspace_members`")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let core = members
        .iter()
        .copied()
        .find(|id| name_of.get(id) == Some(&CORE))
        .with_context(|| format!("{CORE} is not a workspace member"))?;
    let nodes = metadata["resolve"]["nodes"]
        .as_array()
        .context("cargo metadata: no `resolve.nodes`")?;
    // Package id -> ids of its non-dev dependencies.
    let mut edges: HashMap<&str, Vec<&str>> = HashMap::new();
    for node in nodes {
        let id = node["id"].as_str().context("resolve node without id")?;
        let deps = node["deps"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let normal = deps.iter().filter(|d| {
            d["dep_kinds"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k["kind"].as_str() != Some("dev")))
        });
        edges.insert(id, normal.filter_map(|d| d["pkg"].as_str()).collect());
    }

    // Breadth-first, remembering how each package was reached.
    let mut parent: HashMap<&str, &str> = HashMap::new();
    let mut queue = VecDeque::from([core]);
    let mut seen = HashSet::from([core]);
    let mut problems = Vec::new();
    while let Some(id) = queue.pop_front() {
        let name = name_of.get(id).copied().unwrap_or(id);
        if FORBIDDEN_IN_CORE.contains(&name) {
            let mut path = vec![name];
            let mut at = id;
            while let Some(&up) = parent.get(at) {
                path.push(name_of.get(up).copied().unwrap_or(up));
                at = up;
            }
            path.reverse();
            problems.push(format!(
                "layering: {CORE} must not depend on {name} (via {})",
                path.join(" -> ")
            ));
        }
        for &dep in edges.get(id).map(Vec::as_slice).unwrap_or(&[]) {
            if seen.insert(dep) {
                parent.insert(dep, id);
                queue.push_back(dep);
            }
        }
    }
    Ok(problems)
}

/// Checks the workspace conventions of every member's `Cargo.toml`.
fn manifests(metadata: &Value) -> Result<Vec<String>> {
    let root = project_root();
    let members: HashSet<&str> = metadata["workspace_members"]
        .as_array()
        .context("cargo metadata: no `workspace_members`")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut problems = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        if !package["id"]
            .as_str()
            .is_some_and(|id| members.contains(id))
        {
            continue;
        }
        let name = package["name"].as_str().context("package without name")?;
        let manifest = PathBuf::from(
            package["manifest_path"]
                .as_str()
                .context("package without manifest_path")?,
        );
        let dir = manifest.parent().unwrap_or(&root);
        let place = dir.strip_prefix(&root).unwrap_or(dir);
        let expected_place = [
            PathBuf::from("crates").join(name),
            PathBuf::from("xtask"),
            PathBuf::from("tests"),
        ];
        if !expected_place.iter().any(|p| p == place) {
            problems.push(format!(
                "{}: package {name} should live in crates/{name}/",
                rel(&manifest)
            ));
        }
        let text = read_file(&manifest)?;
        problems.extend(
            manifest_problems(&text)
                .into_iter()
                .map(|p| format!("{}: {p}", rel(&manifest))),
        );
    }
    Ok(problems)
}

/// The conventions a member's manifest text misses. A small line scanner is
/// enough for these keys and keeps xtask free of a TOML parser.
fn manifest_problems(text: &str) -> Vec<String> {
    let mut section = String::new();
    let mut found = HashSet::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let compact: String = line.chars().filter(|c| !c.is_whitespace()).collect();
        if compact.starts_with('[') {
            section = compact.trim_matches(['[', ']']).to_owned();
            continue;
        }
        let key = match (section.as_str(), compact.as_str()) {
            ("package", "version.workspace=true" | "version={workspace=true}") => "version",
            ("package", "edition.workspace=true" | "edition={workspace=true}") => "edition",
            ("lints", "workspace=true") => "lints",
            _ => continue,
        };
        found.insert(key);
    }
    let mut problems = Vec::new();
    for (key, want) in [
        ("version", "`version.workspace = true` in [package]"),
        ("edition", "`edition.workspace = true` in [package]"),
        ("lints", "`[lints] workspace = true`"),
    ] {
        if !found.contains(key) {
            problems.push(format!("missing {want}"));
        }
    }
    problems
}

/// Every `.rs` file under [`SOURCE_DIRS`], skipping build output and hidden
/// directories, in a stable order.
fn rust_files() -> Result<Vec<PathBuf>> {
    let root = project_root();
    let mut files = Vec::new();
    for dir in SOURCE_DIRS {
        let dir = root.join(dir);
        if dir.is_dir() {
            walk(&dir, &mut files)?;
        }
    }
    files.sort();
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("could not list {}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let kind = entry
            .file_type()
            .with_context(|| format!("could not stat {}", path.display()))?;
        if kind.is_dir() {
            if name != "target" && !name.starts_with('.') {
                walk(&path, files)?;
            }
        } else if name.ends_with(".rs") {
            files.push(path);
        }
    }
    Ok(())
}

/// Whether `file` must open with a `//!` doc (see the module doc for the exemptions).
fn needs_module_doc(file: &Path) -> bool {
    let exempt_dir = file
        .components()
        .any(|c| matches!(c.as_os_str().to_str(), Some("benches" | "examples")));
    !exempt_dir && file.file_name().is_some_and(|n| n != "build.rs")
}

/// A problem if `text` does not open with a module doc.
fn module_doc(name: &str, text: &str) -> Option<String> {
    if text
        .lines()
        .next()
        .is_some_and(|l| l.contains("@generated"))
    {
        return None;
    }
    let is_plain_comment =
        |l: &str| l.starts_with("//") && !l.starts_with("///") && !l.starts_with("//!");
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !is_plain_comment(l));
    match first {
        Some(l) if l.starts_with("//!") || l.starts_with("/*!") => None,
        _ => Some(format!(
            "{name}: module has no `//!` doc saying what it is for"
        )),
    }
}

/// Problems for every skipped or inverted test in `text`: ignore and
/// should-panic attributes (also through `cfg_attr`) and doctest fences.
fn skipped_tests(name: &str, text: &str) -> Vec<String> {
    const IGNORE: &str = "ignore";
    const SHOULD_PANIC: &str = "should_panic";
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let attr = t.strip_prefix("#[").map(str::trim_start);
        let bad_attr = attr.is_some_and(|a| {
            a.starts_with(IGNORE)
                || a.starts_with(SHOULD_PANIC)
                || (a.starts_with("cfg_attr")
                    && a.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .any(|w| w == IGNORE || w == SHOULD_PANIC))
        });
        let doc = t.strip_prefix("///").or_else(|| t.strip_prefix("//!"));
        let bad_fence = doc
            .and_then(|d| d.trim_start().strip_prefix("```"))
            .is_some_and(|info| {
                info.split(',')
                    .map(str::trim)
                    .any(|w| w == IGNORE || w == SHOULD_PANIC)
            });
        if bad_attr {
            problems.push(format!(
                "{name}:{}: skipped or panic-expecting test; make it pass or delete it \
                 (a test that expects an error should assert on the `Err`)",
                i + 1
            ));
        } else if bad_fence {
            problems.push(format!(
                "{name}:{}: doctest fenced as `{}`; use `no_run` or make it run",
                i + 1,
                info_word(doc.unwrap_or_default())
            ));
        }
    }
    problems
}

fn info_word(doc: &str) -> &str {
    doc.trim().trim_start_matches('`')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tidy() {
        let problems = check_all().unwrap();
        assert!(
            problems.is_empty(),
            "tidy found problems (run `cargo xtask tidy`):\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn layering_names_the_path() {
        let metadata = json!({
            "packages": [
                {"id": "core", "name": "jobqueue-core"},
                {"id": "mid", "name": "middle"},
                {"id": "tok", "name": "tokio"},
                {"id": "pt", "name": "proptest"},
                {"id": "hy", "name": "hyper"},
            ],
            "workspace_members": ["core"],
            "resolve": {"nodes": [
                {"id": "core", "deps": [
                    {"pkg": "mid", "dep_kinds": [{"kind": null}]},
                    {"pkg": "pt", "dep_kinds": [{"kind": "dev"}]},
                ]},
                {"id": "mid", "deps": [{"pkg": "tok", "dep_kinds": [{"kind": "build"}]}]},
                {"id": "pt", "deps": [{"pkg": "hy", "dep_kinds": [{"kind": null}]}]},
                {"id": "tok", "deps": []},
                {"id": "hy", "deps": []},
            ]},
        });
        let problems = layering(&metadata).unwrap();
        assert_eq!(
            problems,
            [
                "layering: jobqueue-core must not depend on tokio (via jobqueue-core -> middle -> tokio)"
            ]
        );
    }

    #[test]
    fn manifest_conventions() {
        let good = "[package]\nname = \"x\"\nversion.workspace = true\nedition = { workspace = true }\n\n[lints]\nworkspace = true # shared\n";
        assert!(manifest_problems(good).is_empty());
        let bad = "[package]\nname = \"x\"\nversion = \"0.1.0\"\nedition.workspace = true\n[dependencies]\nworkspace = true\n";
        assert_eq!(
            manifest_problems(bad),
            [
                "missing `version.workspace = true` in [package]",
                "missing `[lints] workspace = true`"
            ]
        );
    }

    #[test]
    fn module_docs() {
        assert_eq!(module_doc("a.rs", "//! Does a.\nfn a() {}\n"), None);
        assert_eq!(module_doc("a.rs", "// SPDX\n\n//! Does a.\n"), None);
        assert_eq!(module_doc("a.rs", "// @generated by x\ntable!{}\n"), None);
        assert!(module_doc("a.rs", "/// Item doc.\nfn a() {}\n").is_some());
        assert!(module_doc("a.rs", "use x;\n").is_some());
        assert!(module_doc("a.rs", "").is_some());
        assert!(needs_module_doc(Path::new("/r/crates/c/src/lib.rs")));
        assert!(!needs_module_doc(Path::new("/r/crates/c/build.rs")));
        assert!(!needs_module_doc(Path::new("/r/crates/c/benches/store.rs")));
        assert!(!needs_module_doc(Path::new("/r/crates/c/examples/q.rs")));
    }

    #[test]
    fn skipped_tests_are_found() {
        let attr = |body: &str| format!("#[{body}]\nfn t() {{}}\n");
        assert_eq!(skipped_tests("a.rs", &attr("ignore")).len(), 1);
        assert_eq!(skipped_tests("a.rs", &attr("ignore = \"slow\"")).len(), 1);
        assert_eq!(skipped_tests("a.rs", &attr("should_panic")).len(), 1);
        assert_eq!(
            skipped_tests("a.rs", &attr("cfg_attr(miri, ignore)")).len(),
            1
        );
        assert_eq!(skipped_tests("a.rs", "/// ```rust,ignore\n").len(), 1);
        assert_eq!(skipped_tests("a.rs", "//! ```should_panic\n").len(), 1);
        assert!(skipped_tests("a.rs", &attr("test")).is_empty());
        assert!(skipped_tests("a.rs", "/// ```no_run\n/// ```\n").is_empty());
        assert!(skipped_tests("a.rs", "let s = \"#[ignore]\";\n").is_empty());
    }
}
