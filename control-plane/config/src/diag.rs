//! Diagnostics: what was rejected, where, and why.
//!
//! DESIGN.md promises that every rejected input names the document (file and line, or
//! namespace/name) and the field. A [`Diagnostic`] carries exactly that, so the file source,
//! the admission webhook and `weftctl analyze` print the same sentence for the same mistake.

use std::fmt;
use std::path::PathBuf;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The document (or object) was rejected; the previous accepted version, if any, stays.
    Error,
    /// Nothing was rejected, but something was ignored or looks suspicious.
    Warning,
}

/// The kinds Weft reads: the four networking kinds and PeerAuthentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ServiceEntry,
    WorkloadEntry,
    VirtualService,
    DestinationRule,
    PeerAuthentication,
}

impl Kind {
    /// The kind as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::PeerAuthentication => "PeerAuthentication",
        }
    }

    /// Parses a YAML `kind` value.
    pub fn from_name(name: &str) -> Option<Kind> {
        match name {
            "ServiceEntry" => Some(Kind::ServiceEntry),
            "WorkloadEntry" => Some(Kind::WorkloadEntry),
            "VirtualService" => Some(Kind::VirtualService),
            "DestinationRule" => Some(Kind::DestinationRule),
            "PeerAuthentication" => Some(Kind::PeerAuthentication),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one object: the unit that is accepted, kept or replaced.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// One finding about one document or object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file the document came from; `None` for API objects and in-memory text.
    pub file: Option<PathBuf>,
    /// 1-based line; 0 when unknown (for objects that did not come from text).
    pub line: usize,
    /// 1-based column; 0 when unknown.
    pub column: usize,
    /// The object, when the document got far enough to name one.
    pub object: Option<ObjectRef>,
    /// Dotted path of the offending field, e.g. `spec.http[0].route[1].destination.subset`;
    /// empty when the problem is the document as a whole.
    pub field: String,
    pub message: String,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// `reviews.yaml:12:9: VirtualService default/reviews: spec.http[0]...: message`.
    ///
    /// Warnings say so, because a reader scanning a list must tell them from errors; errors
    /// carry no prefix so the common case reads like a compiler's.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut located = false;
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            located = true;
        }
        if self.line > 0 {
            if located {
                write!(f, ":{}:{}", self.line, self.column.max(1))?;
            } else {
                write!(f, "line {}:{}", self.line, self.column.max(1))?;
            }
            located = true;
        }
        if located {
            f.write_str(": ")?;
        }
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}
