//! Config sources: where the mesh's YAML comes from (a directory today, Kubernetes later).
//!
//! A source writes into a [`ConfigStore`] (the index; single writer) and publishes a
//! [`ConfigState`] after each batch of changes. Readers (the xDS cache, admin) only ever look at
//! what was published, so they never see a half-applied batch.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

pub mod file;

/// One finding about the config, as logged and served on `/debug/diagnostics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigDiagnostic {
    /// The file the document came from, if any.
    pub file: Option<String>,
    /// 1-based line; 0 when unknown.
    pub line: usize,
    /// 1-based column; 0 when unknown.
    pub column: usize,
    /// `Kind namespace/name`, when the document got far enough to name one.
    pub object: Option<String>,
    /// Dotted path of the offending field; empty for the document as a whole.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// `"error"` (the document was rejected) or `"warning"`.
    pub severity: Severity,
    /// The one-line form, `file:line:col: Kind ns/name: field: message`.
    pub text: String,
}

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The document was rejected.
    Error,
    /// Accepted, but something was ignored or looks wrong.
    Warning,
}

impl ConfigDiagnostic {
    /// Whether the document was rejected.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// The config as published after a batch of changes.
#[derive(Debug, Clone, Default)]
pub struct ConfigState {
    /// 0 until the first full load is done, then +1 per batch that was applied.
    pub generation: u64,
    /// Every current diagnostic, across all documents.
    pub diagnostics: Arc<[ConfigDiagnostic]>,
}

impl ConfigState {
    /// Whether the first full load is done.
    pub fn loaded(&self) -> bool {
        self.generation > 0
    }

    /// How many error diagnostics there are.
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }
}

/// The index as a source sees it: a sync, single-writer store of documents by file.
pub trait ConfigStore: Send + 'static {
    /// Replaces the documents of `path` with those in `text`; returns the file's diagnostics.
    fn apply_file(&mut self, path: &Path, text: &str) -> Vec<ConfigDiagnostic>;
    /// Forgets every document of `path`.
    fn remove_file(&mut self, path: &Path);
    /// Every current diagnostic.
    fn diagnostics(&self) -> Vec<ConfigDiagnostic>;
    /// Makes the current model visible to readers; called once per batch, before the batch's
    /// [`ConfigState`] is published.
    fn publish(&mut self);
}
