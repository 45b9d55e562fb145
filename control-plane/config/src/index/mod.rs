//! The index: a pure, synchronous, single-writer store of objects that publishes the
//! effective [`Model`].
//!
//! It follows linkerd's policy-controller index (STYLE.md §8 row 7): sources call
//! [`Index::apply`], [`Index::delete`] and [`Index::reset`]; the file source uses the
//! [`Index::apply_file`] / [`Index::remove_file`] layer built on them. No tokio, so every
//! rule is tested with plain `#[test]`s.
//!
//! The rule it enforces is "a bad document is rejected and everything else keeps working;
//! the last good config keeps serving":
//! - a document that fails to parse or validate never reaches the index, so the object's
//!   previous version stays;
//! - an object whose references dangle (unknown host, undefined subset) is not accepted;
//!   its previously accepted version stays, and it is re-checked on every change, so adding
//!   the missing DestinationRule later makes it valid;
//! - a file with a document that cannot even be identified (a YAML syntax error) removes
//!   none of the objects it defined before.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::diag::{Diagnostic, ObjectRef, Severity};
use crate::model::{MeshSettings, Model, VALIDATION_ORDER};
use crate::parse::{Resource, parse_str};

/// What the index remembers about one file.
#[derive(Debug, Default)]
struct FileState {
    /// Objects the file defines (or defined, while it has unidentifiable documents).
    objects: BTreeSet<ObjectRef>,
    /// Parse and schema diagnostics of the file's current text.
    diagnostics: Vec<Diagnostic>,
}

/// The source-agnostic index. See the module docs.
#[derive(Debug)]
pub struct Index {
    settings: MeshSettings,
    /// The latest schema-valid version of every object.
    desired: BTreeMap<ObjectRef, Resource>,
    /// The version of each object that last passed cross-reference validation.
    accepted: BTreeMap<ObjectRef, Resource>,
    /// Which file each object came from (file API only).
    owner: BTreeMap<ObjectRef, PathBuf>,
    files: BTreeMap<PathBuf, FileState>,
    /// Cross-reference diagnostics from the last recomputation.
    reference_errors: Vec<Diagnostic>,
    model: Arc<Model>,
    generation: u64,
}

impl Index {
    pub fn new(settings: MeshSettings) -> Self {
        Self {
            model: Arc::new(Model::new(settings.clone())),
            settings,
            desired: BTreeMap::new(),
            accepted: BTreeMap::new(),
            owner: BTreeMap::new(),
            files: BTreeMap::new(),
            reference_errors: Vec::new(),
            generation: 0,
        }
    }

    /// Replaces the mesh settings (e.g. a new trust bundle during a root rotation) and
    /// republishes the model; a real change bumps the generation, so every proxy gets it.
    pub fn set_settings(&mut self, settings: MeshSettings) {
        self.settings = settings;
        self.recompute();
    }

    /// The current mesh settings.
    pub fn settings(&self) -> &MeshSettings {
        &self.settings
    }

    /// The effective model: every accepted object.
    pub fn model(&self) -> Arc<Model> {
        self.model.clone()
    }

    /// Increases whenever the effective model's content changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every current error: parse and schema errors of every file, and cross-reference
    /// errors of every object.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        self.all_diagnostics()
            .into_iter()
            .filter(Diagnostic::is_error)
            .collect()
    }

    /// Like [`Self::diagnostics`], with warnings (skipped documents) too.
    pub fn all_diagnostics(&self) -> Vec<Diagnostic> {
        let mut out: Vec<Diagnostic> = self
            .files
            .values()
            .flat_map(|f| f.diagnostics.iter().cloned())
            .collect();
        out.extend(self.reference_errors.iter().cloned());
        out
    }

    // === object API (Kubernetes watcher, tests) ===

    /// Adds or replaces one schema-valid object; returns its cross-reference errors (empty
    /// when it was accepted).
    pub fn apply(&mut self, resource: Resource) -> Vec<Diagnostic> {
        let id = resource.id().clone();
        self.desired.insert(id.clone(), resource);
        self.recompute();
        self.reference_errors_of(|d| d.object.as_ref() == Some(&id))
    }

    /// Removes an object (every version of it).
    pub fn delete(&mut self, id: &ObjectRef) {
        self.remove_object(id);
        self.recompute();
    }

    /// Replaces the whole object set (a relist). Objects not in `resources` are removed, so
    /// no stale object survives a watch restart. It also forgets every file: use either the
    /// file API or `reset`, not both on one index.
    pub fn reset(&mut self, resources: Vec<Resource>) {
        self.files.clear();
        self.owner.clear();
        let ids: BTreeSet<ObjectRef> = resources.iter().map(|r| r.id().clone()).collect();
        self.accepted.retain(|id, _| ids.contains(id));
        self.desired = resources.into_iter().map(|r| (r.id().clone(), r)).collect();
        self.recompute();
    }

    // === file API (local mode) ===

    /// Applies the current text of a file; returns every diagnostic about the file's
    /// documents (errors and warnings, including cross-reference errors of its objects).
    pub fn apply_file(&mut self, path: &Path, text: &str) -> Vec<Diagnostic> {
        let parsed = parse_str(text, Some(path));
        let previous = self
            .files
            .get(path)
            .map(|f| f.objects.clone())
            .unwrap_or_default();
        let mut diagnostics = parsed.diagnostics;
        let mut now: BTreeSet<ObjectRef> = parsed.rejected.iter().cloned().collect();
        for resource in parsed.resources {
            let id = resource.id().clone();
            if let Some(other) = self.owner.get(&id)
                && other != path
            {
                let (line, column) = resource.origin().locate("metadata.name");
                diagnostics.push(Diagnostic {
                    severity: Severity::Warning,
                    file: Some(path.to_path_buf()),
                    line,
                    column,
                    object: Some(id.clone()),
                    field: "metadata.name".into(),
                    message: format!(
                        "{id} is also defined in {}; the definition applied last wins",
                        other.display()
                    ),
                });
            }
            self.owner.insert(id.clone(), path.to_path_buf());
            self.desired.insert(id.clone(), resource);
            now.insert(id);
        }
        let mut objects = now.clone();
        if parsed.unidentified > 0 {
            // Some document could not be read far enough to name its object: it may be
            // any of the previous ones, so keep them all.
            objects.extend(previous);
        } else {
            for gone in previous.difference(&now) {
                if self.owner.get(gone).is_some_and(|o| o == path) {
                    self.remove_object(gone);
                }
            }
        }
        self.files.insert(
            path.to_path_buf(),
            FileState {
                objects,
                diagnostics: diagnostics.clone(),
            },
        );
        self.recompute();
        diagnostics.extend(self.reference_errors_of(|d| d.file.as_deref() == Some(path)));
        diagnostics
    }

    /// Forgets a file and removes the objects it defined.
    pub fn remove_file(&mut self, path: &Path) {
        if let Some(state) = self.files.remove(path) {
            for id in state.objects {
                if self.owner.get(&id).is_some_and(|o| o == path) {
                    self.remove_object(&id);
                }
            }
        }
        self.recompute();
    }

    // === internals ===

    fn remove_object(&mut self, id: &ObjectRef) {
        self.desired.remove(id);
        self.accepted.remove(id);
        self.owner.remove(id);
    }

    fn reference_errors_of(&self, keep: impl Fn(&Diagnostic) -> bool) -> Vec<Diagnostic> {
        self.reference_errors
            .iter()
            .filter(|d| keep(d))
            .cloned()
            .collect()
    }

    /// Rebuilds the model from the desired objects, kind by kind in dependency order, each
    /// object checked against what has been accepted so far.
    fn recompute(&mut self) {
        let mut model = Model::new(self.settings.clone());
        let mut errors = Vec::new();
        for kind in VALIDATION_ORDER {
            let ids: Vec<ObjectRef> = self
                .desired
                .keys()
                .filter(|id| id.kind == kind)
                .cloned()
                .collect();
            for id in ids {
                let Some(candidate) = self.desired.get(&id) else {
                    continue;
                };
                let problems = model.check_references(candidate);
                if problems.is_empty() {
                    self.accepted.insert(id.clone(), candidate.clone());
                    model.insert(candidate.clone());
                    continue;
                }
                let origin = candidate.origin();
                for problem in problems {
                    let (line, column) = origin.locate(&problem.field);
                    errors.push(Diagnostic {
                        severity: Severity::Error,
                        file: origin.file.clone(),
                        line,
                        column,
                        object: Some(id.clone()),
                        field: problem.field,
                        message: problem.message,
                    });
                }
                // The last good version keeps serving, even if it is now stale too:
                // removing it would turn one bad edit into an outage.
                if let Some(previous) = self.accepted.get(&id) {
                    model.insert(previous.clone());
                }
            }
        }
        self.reference_errors = errors;
        if !model.same_content(&self.model) {
            self.generation += 1;
            self.model = Arc::new(model);
        } else if *self.model != model {
            // Only positions moved: publish them (diagnostics use them) without a new
            // generation, since translation output cannot change.
            self.model = Arc::new(model);
        }
    }
}

#[cfg(test)]
mod tests;
