//! YAML with positions: documents, field locations and readable syntax errors.
//!
//! serde-saphyr 2.1 reports a line and column for syntax and type errors, and its
//! [`Spanned`] wrapper records where any value came from, but it has no span-aware untyped
//! value. Semantic errors (a bad regex, a dangling subset) are found after typed
//! deserialization, when the positions are gone. So each document is read twice: once into
//! the typed kinds, and once into a small [`Node`] tree of `Spanned` values that is flattened
//! into [`Positions`], a map from field path (`spec.http[0].route`) to line and column.
//!
//! Multi-document files are split here rather than with `from_multiple`, because that
//! function fails the whole file on the first bad document; splitting first lets one bad
//! document be rejected while its neighbours are accepted.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// One `---`-separated document of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Document<'a> {
    /// The document's text (separator lines excluded).
    pub(crate) text: &'a str,
    /// Number of lines of the file before `text`; add it to a document-relative line.
    pub(crate) line_offset: usize,
}

/// Splits a file at `---` lines (and drops `...` end markers and `%` directives).
///
/// A `---` line may carry content after the marker (`--- {a: 1}`); that content is kept by
/// starting the document at the marker line with the marker blanked out, so columns stay
/// exact. Documents that hold only comments and blank lines are dropped by the caller, which
/// finds them empty when it parses them.
pub(crate) fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize; // byte offset of the current document
    let mut start_line = 0usize;
    let mut offset = 0usize;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        if is_marker(bare, "---") || is_marker(bare, "...") {
            docs.push(Document {
                text: &text[start..offset],
                line_offset: start_line,
            });
            start = offset + line.len();
            start_line = index + 1;
        }
        offset += line.len();
    }
    docs.push(Document {
        text: &text[start..],
        line_offset: start_line,
    });
    docs
}

fn is_marker(line: &str, marker: &str) -> bool {
    match line.strip_prefix(marker) {
        Some(rest) => rest.is_empty() || rest.starts_with([' ', '\t']) && rest.trim().is_empty(),
        None => false,
    }
}

/// A 1-based line and column inside one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Pos {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

/// Where every field of a document is: path -> position of its key (for mapping entries) or
/// of the element (for sequence items). Paths use the same syntax as [`crate::Diagnostic`]'s
/// `field`: `spec.http[0].match[1].uri.regex`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions {
    by_path: BTreeMap<String, Pos>,
    /// Line offset of the document in its file, added on lookup.
    line_offset: usize,
}

impl Positions {
    /// The file position (1-based line, column) of `path`, or of its nearest ancestor that
    /// has one; `None` when not even the root is known.
    pub fn locate(&self, path: &str) -> Option<(usize, usize)> {
        let mut path = path;
        loop {
            if let Some(pos) = self.by_path.get(path) {
                return Some((pos.line + self.line_offset, pos.column));
            }
            if path.is_empty() {
                return None;
            }
            path = parent(path);
        }
    }

    /// The field path whose key or value starts at a document-relative position, used to
    /// name the field of a serde error (which only knows the position).
    pub(crate) fn path_at(&self, pos: Pos) -> Option<&str> {
        // The deepest path at that position: keys and their values can share a line, and
        // the longest path is the most specific.
        self.by_path
            .iter()
            .filter(|(_, p)| **p == pos)
            .map(|(path, _)| path.as_str())
            .max_by_key(|path| path.len())
    }

    /// Like [`Self::path_at`], but for a position anywhere on the key's line: the path whose
    /// position is the last one at or before `pos` on the same line.
    pub(crate) fn path_near(&self, pos: Pos) -> Option<&str> {
        if let Some(exact) = self.path_at(pos) {
            return Some(exact);
        }
        self.by_path
            .iter()
            .filter(|(_, p)| p.line == pos.line && p.column <= pos.column)
            .max_by_key(|(path, p)| (p.column, path.len()))
            .map(|(path, _)| path.as_str())
    }

    /// Position of the document's first node, for diagnostics about the document as a whole.
    pub(crate) fn root(&self) -> (usize, usize) {
        self.locate("").unwrap_or((self.line_offset + 1, 1))
    }
}

/// The parent of a field path: `a.b[2]` -> `a.b`, `a.b` -> `a`, `a` -> ``.
fn parent(path: &str) -> &str {
    if path.ends_with(']')
        && let Some(open) = path.rfind('[')
    {
        return &path[..open];
    }
    match path.rfind('.') {
        Some(dot) => &path[..dot],
        None => "",
    }
}

/// Appends a mapping key to a path, quoting keys that would make the path ambiguous.
pub(crate) fn join_key(path: &str, key: &str) -> String {
    let simple = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    let key = if simple {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else if simple {
        format!("{path}.{key}")
    } else {
        format!("{path}[{key}]")
    }
}

/// Appends a sequence index to a path.
pub(crate) fn join_index(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

/// An untyped YAML value that remembers where each part came from.
#[derive(Debug)]
enum Node {
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
            let value = map.next_value()?;
            entries.push((
                Spanned {
                    value: key.value.0,
                    referenced: key.referenced,
                    defined: key.defined,
                },
                value,
            ));
        }
        Ok(Node::Map(entries))
    }
}

/// A mapping key as text, whatever its YAML type (`80:` is an integer key).
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar mapping key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText(String::new()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// The result of reading one document untyped.
#[derive(Debug)]
pub(crate) enum Untyped {
    /// Only comments or whitespace.
    Empty,
    /// A YAML syntax error, with its document-relative position and message.
    Syntax { pos: Pos, message: String },
    /// The document's field positions.
    Tree(Positions),
}

/// Reads a document into [`Positions`] (syntax errors come out here, with positions).
pub(crate) fn read_positions(doc: &Document<'_>) -> Untyped {
    match serde_saphyr::from_str::<Option<Spanned<Node>>>(doc.text) {
        Ok(None) => Untyped::Empty,
        Ok(Some(root)) => {
            let mut positions = Positions {
                by_path: BTreeMap::new(),
                line_offset: doc.line_offset,
            };
            flatten(&root, String::new(), &mut positions.by_path);
            Untyped::Tree(positions)
        }
        Err(err) => {
            let (pos, message) = describe_error(&err);
            Untyped::Syntax { pos, message }
        }
    }
}

fn flatten(node: &Spanned<Node>, path: String, out: &mut BTreeMap<String, Pos>) {
    out.entry(path.clone()).or_insert_with(|| pos_of(node));
    match &node.value {
        Node::Map(entries) => {
            for (key, value) in entries {
                let child = join_key(&path, &key.value);
                // The key's position is what a reader looks for ("line 12: subset: v9").
                out.insert(child.clone(), pos_of(key));
                // The value position is recorded too, under a suffix no field path uses,
                // so that serde errors (which point at values) can be mapped back.
                out.insert(format!("{child}\u{0}value"), pos_of(value));
                flatten_children(value, child, out);
            }
        }
        Node::Seq(items) => {
            for (index, item) in items.iter().enumerate() {
                let child = join_index(&path, index);
                out.insert(child.clone(), pos_of(item));
                flatten_children(item, child, out);
            }
        }
        Node::Scalar => {}
    }
}

fn flatten_children(node: &Spanned<Node>, path: String, out: &mut BTreeMap<String, Pos>) {
    match &node.value {
        Node::Scalar => {}
        _ => {
            // Do not overwrite the key position already recorded for this path.
            let key_pos = out.get(&path).copied();
            flatten(node, path.clone(), out);
            if let Some(key_pos) = key_pos {
                out.insert(path, key_pos);
            }
        }
    }
}

fn pos_of<T>(spanned: &Spanned<T>) -> Pos {
    Pos {
        line: usize::try_from(spanned.referenced.line()).unwrap_or(0),
        column: usize::try_from(spanned.referenced.column()).unwrap_or(0),
    }
}

/// A serde-saphyr error's position and its message without the "at line X, column Y"
/// suffix (our diagnostics print positions themselves, relative to the file).
pub(crate) fn describe_error(err: &serde_saphyr::Error) -> (Pos, String) {
    let pos = err
        .location()
        .map(|l| Pos {
            line: usize::try_from(l.line()).unwrap_or(0),
            column: usize::try_from(l.column()).unwrap_or(0),
        })
        .unwrap_or_default();
    let mut message = err.without_snippet().to_string();
    if let Some((head, tail)) = message.rsplit_once(" at line ")
        && tail.contains(", column ")
    {
        message = head.to_string();
    }
    // serde-saphyr suggests one of its own options for duplicate keys; that advice is for
    // programmers embedding the library, not for people writing mesh config.
    if let Some((head, _)) = message.split_once(", set DuplicateKeyPolicy") {
        message = head.to_string();
    }
    (pos, message)
}

impl Positions {
    /// Maps a serde error position (which points at a key or a value) to a field path.
    pub(crate) fn field_for_error(&self, pos: Pos) -> String {
        let found = self.path_near(pos).unwrap_or("");
        found
            .strip_suffix("\u{0}value")
            .unwrap_or(found)
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_keeps_line_offsets() {
        let text = "a: 1\n---\nb: 2\n--- \n\n# c\n...\nd: 3\n";
        let docs = split_documents(text);
        let got: Vec<_> = docs.iter().map(|d| (d.text, d.line_offset)).collect();
        assert_eq!(
            got,
            vec![("a: 1\n", 0), ("b: 2\n", 2), ("\n# c\n", 4), ("d: 3\n", 7)]
        );
    }

    #[test]
    fn locates_keys_and_items() {
        let doc = Document {
            text: "spec:\n  http:\n  - route:\n    - destination: {host: a, subset: v1}\n",
            line_offset: 10,
        };
        let Untyped::Tree(pos) = read_positions(&doc) else {
            panic!("expected a tree")
        };
        assert_eq!(pos.locate("spec.http"), Some((12, 3)));
        assert_eq!(pos.locate("spec.http[0].route[0]"), Some((14, 7)));
        assert_eq!(
            pos.locate("spec.http[0].route[0].destination.subset"),
            Some((14, 30))
        );
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(pos.locate("spec.http[0].timeout"), Some((13, 5)));
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent("a.b[2]"), "a.b");
        assert_eq!(parent("a.b"), "a");
        assert_eq!(parent("a"), "");
        assert_eq!(parent("a[\"x.y\"]"), "a");
    }
}
