//! Text to resources: split documents, read each one typed and untyped, validate its schema,
//! and turn every problem into a positioned [`Diagnostic`].
//!
//! Each document stands alone: a syntax error, an unknown field or a bad value rejects that
//! document only. Documents of kinds Weft does not read (Deployments, Gateways, ...) are
//! skipped with a warning, because real Istio manifests mix them in.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};

use crate::diag::{Diagnostic, Kind, ObjectRef, Severity};
use crate::kinds::{
    DestinationRule, NETWORKING_API_VERSIONS, ObjectMeta, PeerAuthentication,
    SECURITY_API_VERSIONS, ServiceEntry, VirtualService, WorkloadEntry,
};
use crate::validate::{self, FieldError};
use crate::yaml::{self, Document, Positions, Untyped};

/// Where an object came from, so that later diagnostics (cross-reference errors found by
/// the index) can point at the right file, line and field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub file: Option<PathBuf>,
    /// 1-based line of the document's first node; 0 for objects that did not come from text.
    pub line: usize,
    pub column: usize,
    /// Field positions of the document, when it came from text.
    pub positions: Option<Arc<Positions>>,
}

impl Origin {
    /// The position of a field (or its nearest ancestor), else of the document.
    pub fn locate(&self, field: &str) -> (usize, usize) {
        self.positions
            .as_ref()
            .and_then(|p| p.locate(field))
            .unwrap_or((self.line, self.column))
    }
}

/// One accepted object of kind `T`.
#[derive(Debug, Clone, PartialEq)]
pub struct Object<T> {
    pub id: ObjectRef,
    pub metadata: ObjectMeta,
    pub spec: T,
    pub origin: Origin,
}

impl<T> Object<T> {
    /// The object's namespace (never empty: `default` when the YAML has none).
    pub fn namespace(&self) -> &str {
        &self.id.namespace
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        &self.id.name
    }
}

/// A schema-valid object of one of the kinds Weft reads.
// Variants differ in size, but resources are few and long-lived; boxing would only make
// every match on them noisier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    ServiceEntry(Object<ServiceEntry>),
    WorkloadEntry(Object<WorkloadEntry>),
    VirtualService(Object<VirtualService>),
    DestinationRule(Object<DestinationRule>),
    PeerAuthentication(Object<PeerAuthentication>),
}

impl Resource {
    pub fn id(&self) -> &ObjectRef {
        match self {
            Resource::ServiceEntry(o) => &o.id,
            Resource::WorkloadEntry(o) => &o.id,
            Resource::VirtualService(o) => &o.id,
            Resource::DestinationRule(o) => &o.id,
            Resource::PeerAuthentication(o) => &o.id,
        }
    }

    pub fn origin(&self) -> &Origin {
        match self {
            Resource::ServiceEntry(o) => &o.origin,
            Resource::WorkloadEntry(o) => &o.origin,
            Resource::VirtualService(o) => &o.origin,
            Resource::DestinationRule(o) => &o.origin,
            Resource::PeerAuthentication(o) => &o.origin,
        }
    }

    /// Whether two versions configure the same thing (origins, i.e. positions, ignored), so
    /// that moving a document inside a file does not count as a model change.
    pub fn same_content(&self, other: &Resource) -> bool {
        match (self, other) {
            (Resource::ServiceEntry(a), Resource::ServiceEntry(b)) => {
                a.id == b.id && a.metadata == b.metadata && a.spec == b.spec
            }
            (Resource::WorkloadEntry(a), Resource::WorkloadEntry(b)) => {
                a.id == b.id && a.metadata == b.metadata && a.spec == b.spec
            }
            (Resource::VirtualService(a), Resource::VirtualService(b)) => {
                a.id == b.id && a.metadata == b.metadata && a.spec == b.spec
            }
            (Resource::DestinationRule(a), Resource::DestinationRule(b)) => {
                a.id == b.id && a.metadata == b.metadata && a.spec == b.spec
            }
            (Resource::PeerAuthentication(a), Resource::PeerAuthentication(b)) => {
                a.id == b.id && a.metadata == b.metadata && a.spec == b.spec
            }
            _ => false,
        }
    }
}

/// The result of parsing one text (usually one file).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// Schema-valid objects, in document order.
    pub resources: Vec<Resource>,
    /// Errors and warnings, in document order.
    pub diagnostics: Vec<Diagnostic>,
    /// Objects whose document named them but was rejected: their previous version (if
    /// any) stays in effect.
    pub rejected: Vec<ObjectRef>,
    /// Documents rejected before they could name an object (YAML syntax errors, missing
    /// kind or name). When non-zero, the index cannot tell which objects the file still
    /// means to define, so it removes none of the file's previous objects.
    pub unidentified: usize,
}

/// Kinds that belong to Weft but arrive with a later capability.
const LATER_KINDS: [&str; 2] = ["AuthorizationPolicy", "RequestAuthentication"];

/// The apiVersions a kind is read from: Weft's group and Istio's aliases.
fn api_versions(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::PeerAuthentication => &SECURITY_API_VERSIONS,
        Kind::ServiceEntry | Kind::WorkloadEntry | Kind::VirtualService | Kind::DestinationRule => {
            &NETWORKING_API_VERSIONS
        }
    }
}

/// Parses every document of `text`. `file` is used only to label diagnostics and origins.
pub fn parse_str(text: &str, file: Option<&Path>) -> Parsed {
    let mut parsed = Parsed::default();
    let mut seen: Vec<(ObjectRef, usize)> = Vec::new();
    for doc in yaml::split_documents(text) {
        let mut ctx = DocContext {
            file,
            positions: None,
            object: None,
            out: &mut parsed,
            line_offset: doc.line_offset,
        };
        match parse_document(&doc, &mut ctx) {
            Outcome::Empty | Outcome::Skipped => {}
            Outcome::Unidentified => parsed.unidentified += 1,
            Outcome::Rejected(id) => parsed.rejected.push(id),
            Outcome::Accepted(resource) => {
                let id = resource.id().clone();
                if let Some((_, line)) = seen.iter().find(|(seen_id, _)| *seen_id == id) {
                    let (l, c) = resource.origin().locate("metadata.name");
                    parsed.diagnostics.push(Diagnostic {
                        severity: Severity::Error,
                        file: file.map(Path::to_path_buf),
                        line: l,
                        column: c,
                        object: Some(id.clone()),
                        field: "metadata.name".into(),
                        message: format!(
                            "{id} is defined twice in this file (first at line {line}); the second definition is ignored"
                        ),
                    });
                } else {
                    seen.push((id, resource.origin().line));
                    parsed.resources.push(resource);
                }
            }
        }
    }
    parsed
}

#[allow(clippy::large_enum_variant)]
enum Outcome {
    Empty,
    Skipped,
    Unidentified,
    Rejected(ObjectRef),
    Accepted(Resource),
}

struct DocContext<'a, 'p> {
    file: Option<&'a Path>,
    positions: Option<Arc<Positions>>,
    object: Option<ObjectRef>,
    out: &'p mut Parsed,
    line_offset: usize,
}

impl DocContext<'_, '_> {
    fn root(&self) -> (usize, usize) {
        match &self.positions {
            Some(p) => p.root(),
            None => (self.line_offset + 1, 1),
        }
    }

    fn push(&mut self, severity: Severity, field: &str, message: impl Into<String>) {
        let (line, column) = self
            .positions
            .as_ref()
            .and_then(|p| p.locate(field))
            .unwrap_or_else(|| self.root());
        self.push_at(severity, line, column, field, message);
    }

    fn push_at(
        &mut self,
        severity: Severity,
        line: usize,
        column: usize,
        field: &str,
        message: impl Into<String>,
    ) {
        self.out.diagnostics.push(Diagnostic {
            severity,
            file: self.file.map(Path::to_path_buf),
            line,
            column,
            object: self.object.clone(),
            field: field.to_string(),
            message: message.into(),
        });
    }

    fn serde_error(&mut self, err: &serde_saphyr::Error) {
        let (pos, message) = yaml::describe_error(err);
        let field = self
            .positions
            .as_ref()
            .map(|p| p.field_for_error(pos))
            .unwrap_or_default();
        let (line, column) = if pos.line > 0 {
            (pos.line + self.line_offset, pos.column)
        } else {
            self.root()
        };
        self.push_at(Severity::Error, line, column, &field, message);
    }

    fn field_errors(&mut self, errors: &[FieldError]) {
        for e in errors {
            self.push(Severity::Error, &e.field, e.message.clone());
        }
    }
}

/// Lenient first look at a document: enough to name it and pick a schema.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    api_version: Option<IgnoredOr<String>>,
    #[serde(default)]
    kind: Option<IgnoredOr<String>>,
    #[serde(default)]
    metadata: Option<IgnoredOr<HeaderMeta>>,
}

#[derive(Deserialize)]
struct HeaderMeta {
    #[serde(default)]
    name: Option<IgnoredOr<String>>,
    #[serde(default)]
    namespace: Option<IgnoredOr<String>>,
}

/// A value of type `T`, or anything else (ignored): the header must never fail on types,
/// the typed pass reports those with positions.
#[derive(Deserialize)]
#[serde(untagged)]
enum IgnoredOr<T> {
    Value(T),
    #[allow(dead_code)]
    Other(IgnoredAny),
}

impl<T> IgnoredOr<T> {
    fn value(self) -> Option<T> {
        match self {
            IgnoredOr::Value(v) => Some(v),
            IgnoredOr::Other(_) => None,
        }
    }
}

/// The typed form of a document of one kind.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[serde(bound = "S: DeserializeOwned")]
struct TypedDoc<S> {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<S>,
    /// Server-set; ignored.
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<IgnoredAny>,
}

fn parse_document(doc: &Document<'_>, ctx: &mut DocContext<'_, '_>) -> Outcome {
    let positions = match yaml::read_positions(doc) {
        Untyped::Empty => return Outcome::Empty,
        Untyped::Syntax { pos, message } => {
            let (line, column) = if pos.line > 0 {
                (pos.line + doc.line_offset, pos.column)
            } else {
                ctx.root()
            };
            ctx.push_at(
                Severity::Error,
                line,
                column,
                "",
                format!("invalid YAML: {message}"),
            );
            return Outcome::Unidentified;
        }
        Untyped::Tree(positions) => Arc::new(positions),
    };
    ctx.positions = Some(positions.clone());

    let header = match serde_saphyr::from_str::<Header>(doc.text) {
        Ok(h) => h,
        Err(_) => {
            ctx.push(
                Severity::Error,
                "",
                "not a Kubernetes object: expected a mapping with apiVersion, kind, metadata and spec",
            );
            return Outcome::Unidentified;
        }
    };
    let api_version = header.api_version.and_then(IgnoredOr::value);
    let kind_name = header.kind.and_then(IgnoredOr::value);
    let meta = header.metadata.and_then(IgnoredOr::value);
    let name = meta
        .as_ref()
        .and_then(|m| m.name.as_ref())
        .and_then(|n| match n {
            IgnoredOr::Value(v) => Some(v.clone()),
            IgnoredOr::Other(_) => None,
        });
    let namespace = meta
        .and_then(|m| m.namespace)
        .and_then(IgnoredOr::value)
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| "default".to_string());

    let Some(kind_name) = kind_name else {
        ctx.push(
            Severity::Error,
            "kind",
            "Required value: every document needs a kind",
        );
        return Outcome::Unidentified;
    };
    let Some(kind) = Kind::from_name(&kind_name) else {
        let message = if LATER_KINDS.contains(&kind_name.as_str()) {
            format!("{kind_name} arrives in a later release of Weft; document skipped")
        } else {
            format!("kind {kind_name} is not read by the file source; document skipped")
        };
        ctx.push(Severity::Warning, "", message);
        return Outcome::Skipped;
    };
    let id = match name {
        Some(name) if !name.is_empty() => ObjectRef::new(kind, namespace, name),
        _ => {
            ctx.push(
                Severity::Error,
                "metadata.name",
                format!("Required value: every {kind} needs a name"),
            );
            return Outcome::Unidentified;
        }
    };
    ctx.object = Some(id.clone());
    let versions = api_versions(kind);
    match api_version.as_deref() {
        Some(v) if versions.contains(&v) => {}
        Some(v) => {
            let list = versions.join(", ");
            ctx.push(
                Severity::Error,
                "apiVersion",
                format!("Unsupported value: {v:?}: {kind} is read from {list}"),
            );
            return Outcome::Rejected(id);
        }
        None => {
            ctx.push(Severity::Error, "apiVersion", "Required value");
            return Outcome::Rejected(id);
        }
    }

    let origin = Origin {
        file: ctx.file.map(Path::to_path_buf),
        line: ctx.root().0,
        column: ctx.root().1,
        positions: Some(positions),
    };
    let resource = match kind {
        Kind::ServiceEntry => typed(doc, ctx, &id, origin, |spec| {
            spec.map_or_else(|| vec![spec_required()], validate::service_entry)
        })
        .map(Resource::ServiceEntry),
        Kind::WorkloadEntry => {
            typed(doc, ctx, &id, origin, validate::workload_entry).map(Resource::WorkloadEntry)
        }
        Kind::VirtualService => typed(doc, ctx, &id, origin, |spec| {
            spec.map_or_else(|| vec![spec_required()], validate::virtual_service)
        })
        .map(Resource::VirtualService),
        Kind::DestinationRule => typed(doc, ctx, &id, origin, |spec| {
            spec.map_or_else(|| vec![spec_required()], validate::destination_rule)
        })
        .map(Resource::DestinationRule),
        // `spec: {}` (or no spec) is a valid policy: mode UNSET, i.e. inherit.
        Kind::PeerAuthentication => typed(doc, ctx, &id, origin, |spec| {
            spec.map_or_else(Vec::new, validate::peer_authentication)
        })
        .map(Resource::PeerAuthentication),
    };
    match resource {
        Some(resource) => Outcome::Accepted(resource),
        None => Outcome::Rejected(id),
    }
}

fn spec_required() -> FieldError {
    FieldError {
        field: "spec".into(),
        message: "Required value".into(),
    }
}

/// Reads a document as kind `S` and validates it; `None` when rejected (diagnostics pushed).
fn typed<S: DeserializeOwned + Default>(
    doc: &Document<'_>,
    ctx: &mut DocContext<'_, '_>,
    id: &ObjectRef,
    origin: Origin,
    check: impl FnOnce(Option<&S>) -> Vec<FieldError>,
) -> Option<Object<S>> {
    let typed: TypedDoc<S> = match serde_saphyr::from_str(doc.text) {
        Ok(t) => t,
        Err(err) => {
            ctx.serde_error(&err);
            return None;
        }
    };
    let mut errors = validate::metadata(id.kind, &typed.metadata);
    errors.extend(check(typed.spec.as_ref()));
    if !errors.is_empty() {
        ctx.field_errors(&errors);
        return None;
    }
    Some(Object {
        id: id.clone(),
        metadata: typed.metadata,
        spec: typed.spec.unwrap_or_default(),
        origin,
    })
}
