//! Exact caching. A step's cache key is the BLAKE3 digest of its components:
//! kind and command (with the interpreter it resolves to), the resolved
//! `with:` values, declared `env:`, input artifact digests, the content of
//! the files its `code:` globs match, the source file an ingest reads, the
//! project's lockfiles (for a command), the Weir version and any
//! `cache_version`. The components are kept with the
//! step run, so a later miss can say exactly what changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use weir_core::ops::BuiltinOp;
use weir_core::pipeline::{Action, Step};
use weir_core::Digest;

use crate::exec::StagedInput;
use crate::EngineError;

pub(crate) struct CacheKey {
    pub key: String,
    pub components: BTreeMap<String, String>,
    /// Problems worth telling the user about, e.g. a `code:` glob that matches nothing.
    pub warnings: Vec<String>,
}

impl CacheKey {
    pub fn components_json(&self) -> String {
        serde_json::to_string(&self.components).expect("a string map serializes")
    }
}

/// Whether a step's results may be reused at all: registering a model is a
/// write to the registry, not a pure function of its inputs.
pub(crate) fn cacheable(step: &Step) -> bool {
    step.cache && step.action != Action::Builtin(BuiltinOp::Register)
}

fn digest_file(path: &Path) -> Result<String, EngineError> {
    Ok(Digest::of_file(path)
        .map_err(EngineError::io("cannot read", path))?
        .hex())
}

/// Files a project pins its dependencies with, beside the pipeline file.
/// A command's key includes them: a changed dependency runs it again, and
/// lineage can say which environment a model came from.
pub const LOCKFILES: &[&str] = &[
    "uv.lock",
    "poetry.lock",
    "pdm.lock",
    "Pipfile.lock",
    "requirements.txt",
    "requirements.lock",
    "conda-lock.yml",
    "environment.yml",
    "renv.lock",
    "package-lock.json",
    "pnpm-lock.yaml",
    "yarn.lock",
    "Manifest.toml",
    "Gemfile.lock",
    "Cargo.lock",
    "go.sum",
];

/// The program a command starts, as an absolute path, so that a different
/// interpreter (another python3 on PATH) is a different key.
fn interpreter(command: &str, base_dir: &Path) -> Option<PathBuf> {
    let program = command.split_whitespace().find(|w| !w.contains('='))?;
    let resolved = if program.contains('/') {
        base_dir.join(program)
    } else {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())?
    };
    resolved.canonicalize().ok()
}

pub(crate) fn compute(
    step: &Step,
    base_dir: &Path,
    inputs: &BTreeMap<String, StagedInput>,
) -> Result<CacheKey, EngineError> {
    let mut components = BTreeMap::new();
    let mut warnings = Vec::new();
    components.insert("weir".to_string(), weir_core::WEIR_VERSION.to_string());
    match &step.action {
        Action::Builtin(op) => {
            components.insert("kind".into(), op.name().into());
            if *op == BuiltinOp::Ingest {
                if let Some(path) = step.with.get("path").and_then(|p| p.as_str()) {
                    components.insert(format!("source {path}"), digest_file(&base_dir.join(path))?);
                }
            }
        }
        Action::Command(command) => {
            components.insert("kind".into(), "command".into());
            components.insert("command".into(), command.clone());
            if let Some(program) = interpreter(command, base_dir) {
                components.insert("interpreter".into(), program.display().to_string());
            }
            for name in LOCKFILES {
                let path = base_dir.join(name);
                if path.is_file() {
                    components.insert(format!("lockfile {name}"), digest_file(&path)?);
                }
            }
        }
    }
    for (k, v) in &step.with {
        components.insert(format!("with.{k}"), v.to_string());
    }
    if let Some(tune) = &step.tune {
        components.insert("tune".into(), tune.spec.to_string());
    }
    for (k, v) in &step.env {
        components.insert(format!("env {k}"), v.clone());
    }
    for (name, input) in inputs {
        components.insert(format!("input {name}"), input.digest.hex());
    }
    components.insert("outputs".into(), step.outputs.join(","));
    if let Some(v) = &step.cache_version {
        components.insert("cache_version".into(), v.clone());
    }
    // A step that starts keeping a dataset runs once more to record it.
    for (output, dataset) in &step.datasets {
        components.insert(format!("dataset {output}"), dataset.clone());
    }
    if let Some(policy) = &step.schema_evolution {
        components.insert("schema evolution".into(), policy.clone());
    }
    for pattern in &step.code {
        let full = base_dir.join(pattern);
        let matches: Vec<PathBuf> = glob::glob(&full.to_string_lossy())
            .map_err(|e| {
                EngineError::StepFailed(format!(
                    "steps.{}.code: '{pattern}' is not a valid glob: {e}",
                    step.name
                ))
            })?
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        if matches.is_empty() {
            warnings.push(format!(
                "steps.{}.code: '{pattern}' matches no file",
                step.name
            ));
        }
        for file in matches {
            let rel = file
                .strip_prefix(base_dir)
                .unwrap_or(&file)
                .display()
                .to_string();
            components.insert(format!("code {rel}"), digest_file(&file)?);
        }
    }
    let key = Digest::of_bytes(
        serde_json::to_string(&components)
            .expect("serializes")
            .as_bytes(),
    )
    .hex();
    Ok(CacheKey {
        key,
        components,
        warnings,
    })
}

/// Why a step runs again: the components that differ from its last
/// successful run, e.g. "input train changed, with.l2 changed".
pub(crate) fn explain(previous: Option<&str>, current: &BTreeMap<String, String>) -> String {
    let Some(previous) =
        previous.and_then(|p| serde_json::from_str::<BTreeMap<String, String>>(p).ok())
    else {
        return "no earlier run".into();
    };
    let mut changes = Vec::new();
    for (k, v) in current {
        match previous.get(k) {
            None => changes.push(format!("{k} added")),
            Some(old) if old != v => changes.push(format!("{k} changed")),
            _ => {}
        }
    }
    for k in previous.keys().filter(|k| !current.contains_key(*k)) {
        changes.push(format!("{k} removed"));
    }
    match changes.len() {
        0 => "its earlier outputs are gone".into(),
        1..=3 => changes.join(", "),
        n => format!("{} and {} more", changes[..3].join(", "), n - 3),
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// A one-step pipeline's step, with these `with:` values.
    fn step(command: &str, with: &BTreeMap<String, i64>) -> Step {
        let values: Vec<String> = with.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let text = format!(
            "version: 1\nname: p\nsteps:\n  s:\n    run: {command}\n    with: {{ {} }}\n",
            values.join(", ")
        );
        let mut pipeline = weir_core::pipeline::parse(Path::new("p.yaml"), &text, &[]).unwrap();
        pipeline.steps.remove(0)
    }

    fn key(step: &Step) -> CacheKey {
        compute(step, Path::new("/nonexistent"), &BTreeMap::new()).unwrap()
    }

    proptest! {
        /// The key is a function of the step alone: the same step gives the
        /// same key every time, whatever order its `with:` was written in;
        /// any one value changed gives another key, and the explanation
        /// names exactly that value.
        #[test]
        fn the_key_changes_exactly_when_a_component_does(
            with in prop::collection::btree_map("[a-z]{1,6}", -1000i64..1000, 1..6),
            pick in any::<prop::sample::Index>(),
            delta in 1i64..50,
        ) {
            let base = key(&step("echo hi", &with));
            prop_assert_eq!(&key(&step("echo hi", &with)).key, &base.key);
            let mut reversed: Vec<_> = with.iter().collect();
            reversed.reverse();
            let values: Vec<String> = reversed.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let text = format!(
                "version: 1\nname: p\nsteps:\n  s:\n    run: echo hi\n    with: {{ {} }}\n",
                values.join(", ")
            );
            let mut other = weir_core::pipeline::parse(Path::new("p.yaml"), &text, &[]).unwrap();
            prop_assert_eq!(&key(&other.steps.remove(0)).key, &base.key);

            let name = pick.get(&with.keys().collect::<Vec<_>>()).to_string();
            let mut changed = with.clone();
            *changed.get_mut(&name).unwrap() += delta;
            let moved = key(&step("echo hi", &changed));
            prop_assert_ne!(&moved.key, &base.key);
            prop_assert_eq!(
                explain(Some(&base.components_json()), &moved.components),
                format!("with.{name} changed")
            );
            prop_assert_ne!(&key(&step("echo bye", &with)).key, &base.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_what_changed() {
        let old: BTreeMap<String, String> =
            [("input train", "a"), ("with.l2", "0.1"), ("code x.py", "c")]
                .map(|(k, v)| (k.into(), v.into()))
                .into();
        let mut new = old.clone();
        new.insert("input train".into(), "b".into());
        new.remove("code x.py");
        let old_json = serde_json::to_string(&old).unwrap();
        assert_eq!(
            explain(Some(&old_json), &new),
            "input train changed, code x.py removed"
        );
        assert_eq!(explain(None, &new), "no earlier run");
        assert_eq!(
            explain(Some(&old_json), &old),
            "its earlier outputs are gone"
        );
    }
}
