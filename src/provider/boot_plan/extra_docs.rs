//! `--extra-machine-config-path`: Talos configuration documents the operator adds to the
//! join configuration every machine loads from `/config`.
//!
//! Read once at start, as upstream does. The file is split into its YAML documents; each
//! is checked the way upstream's loader (Talos `configloader`) and its own filter do:
//!
//! - a document must be a mapping (empty and `null` documents are skipped);
//! - a `v1alpha1` machine configuration (no `kind`, with `apiVersion: v1alpha1` or one of
//!   the legacy keys `machine`, `cluster`, `debug`, `persist`) is refused: Omni owns it;
//! - `SideroLinkConfig` and `EventSinkConfig` are refused: Omni's join documents carry them;
//! - a `KmsgLogConfig` named `siderolink-agent-kmsg-log` and a `TrustedRootsConfig` named
//!   `infra-provider-ca` are refused: those names are the provider's;
//! - a document without `kind` or `apiVersion` is refused, and so is a second document
//!   with the same `apiVersion`, `kind` and `name`.
//!
//! Every offending document is named in one error. Unlike upstream, a kind unknown to this
//! build is accepted as it is: the Talos that loads it (whose version ironboot does not
//! pin) validates it. Accepted documents are served as written (upstream re-encodes them
//! without comments), after Omni's documents and the TLS mode's `TrustedRootsConfig`, in
//! the file's order.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};

use super::join_config::INFRA_PROVIDER_CA;

/// The flag the documents come from, for messages.
const FLAG: &str = "--extra-machine-config-path";

/// Name of the `KmsgLogConfig` document the provider reserves (upstream's).
pub(crate) const AGENT_KMSG_LOG: &str = "siderolink-agent-kmsg-log";

/// Larger than any sensible configuration; a bigger file is a wrong path.
const MAX_FILE_SIZE: u64 = 4 << 20;

/// The accepted extra documents, in the file's order. `Debug` shows only kinds and names:
/// the documents may carry secrets (registry credentials, keys).
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct ExtraDocuments {
    docs: Vec<ExtraDocument>,
}

/// One accepted document.
#[derive(Clone, PartialEq, Eq)]
struct ExtraDocument {
    api_version: String,
    kind: String,
    name: Option<String>,
    /// The document as written, ending with a newline, without separators.
    text: String,
}

impl fmt::Debug for ExtraDocuments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.docs.iter().map(ExtraDocument::label))
            .finish()
    }
}

impl fmt::Display for ExtraDocuments {
    /// `kind/name, kind, ...`, for the start-up log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.docs.is_empty() {
            return f.write_str("none");
        }
        for (i, d) in self.docs.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{}", d.label())?;
        }
        Ok(())
    }
}

impl ExtraDocument {
    fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("{}/{name}", self.kind),
            None => self.kind.clone(),
        }
    }
}

/// Why the extra documents cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExtraDocumentsError {
    /// The file cannot be read.
    #[error("{FLAG} {path}: cannot read it: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is implausibly large or not UTF-8 text.
    #[error("{FLAG} {path}: {reason}")]
    NotText {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// One or more documents are refused.
    #[error("{FLAG} {path}: {}", join_problems(problems))]
    Refused {
        /// The file.
        path: PathBuf,
        /// One entry per offending document.
        problems: Vec<DocumentProblem>,
    },
}

fn join_problems(problems: &[DocumentProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// An offending document: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {index} (line {line}){}: {reason}", label.as_ref().map(|l| format!(" {l}")).unwrap_or_default())]
pub(crate) struct DocumentProblem {
    /// 1-based position among the file's non-empty documents.
    pub(crate) index: usize,
    /// 1-based line where the document starts.
    pub(crate) line: usize,
    /// `kind` or `kind/name`, when known.
    pub(crate) label: Option<String>,
    /// What is wrong.
    pub(crate) reason: String,
}

impl ExtraDocuments {
    /// Read, split and check the documents of the file at `path`.
    pub(crate) fn load(path: &Path) -> Result<Self, ExtraDocumentsError> {
        let read = |source| ExtraDocumentsError::Read {
            path: path.to_owned(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > MAX_FILE_SIZE {
            return Err(ExtraDocumentsError::NotText {
                path: path.to_owned(),
                reason: format!("{size} bytes, larger than a machine configuration can be"),
            });
        }
        let bytes = std::fs::read(path).map_err(read)?;
        let text = String::from_utf8(bytes).map_err(|e| ExtraDocumentsError::NotText {
            path: path.to_owned(),
            reason: format!("not UTF-8 text: {e}"),
        })?;
        Self::parse(&text).map_err(|problems| ExtraDocumentsError::Refused {
            path: path.to_owned(),
            problems,
        })
    }

    /// Split and check `text`; `Err`: every offending document.
    pub(crate) fn parse(text: &str) -> Result<Self, Vec<DocumentProblem>> {
        let mut docs = Vec::new();
        let mut problems = Vec::new();
        let mut seen = HashSet::new();
        for (i, chunk) in split_documents(text).into_iter().enumerate() {
            let index = i + 1;
            let problem = |label: Option<String>, reason: String| DocumentProblem {
                index,
                line: chunk.line,
                label,
                reason,
            };
            let head = match serde_saphyr::from_str::<Option<Head>>(&chunk.text) {
                Ok(Some(head)) => head,
                // A `null` document: skipped, as Talos does.
                Ok(None) => continue,
                Err(e) => {
                    problems.push(problem(None, format!("not a YAML mapping: {e}")));
                    continue;
                }
            };
            match check(&head) {
                Ok(id) => {
                    let label = Some(id.label());
                    if !seen.insert(id.clone()) {
                        problems.push(problem(
                            label,
                            format!(
                                "a second document with apiVersion {:?}, kind {:?} and name {:?} \
                                 (Talos refuses duplicates)",
                                id.api_version,
                                id.kind,
                                id.name.as_deref().unwrap_or("")
                            ),
                        ));
                        continue;
                    }
                    docs.push(ExtraDocument {
                        api_version: id.api_version,
                        kind: id.kind,
                        name: id.name,
                        text: chunk.text,
                    });
                }
                Err((label, reason)) => problems.push(problem(label, reason)),
            }
        }
        if problems.is_empty() {
            Ok(Self { docs })
        } else {
            Err(problems)
        }
    }

    /// No documents.
    pub(crate) fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Number of documents.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.docs.len()
    }

    /// The documents' texts, in order, each ending with a newline, without separators.
    pub(crate) fn texts(&self) -> impl Iterator<Item = &str> {
        self.docs.iter().map(|d| d.text.as_str())
    }
}

/// A document's identity, as Talos keys duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DocId {
    api_version: String,
    kind: String,
    name: Option<String>,
}

impl DocId {
    fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("{}/{name}", self.kind),
            None => self.kind.clone(),
        }
    }
}

/// The kind of the legacy machine configuration (Talos `v1alpha1.Version`).
const V1ALPHA1: &str = "v1alpha1";

/// Upstream's filter over Talos' document identification. `Err`: the label (if known)
/// and why the document is refused.
fn check(head: &Head) -> Result<DocId, (Option<String>, String)> {
    let kind = head.kind.as_deref().filter(|k| !k.is_empty());
    // Talos takes a document without `kind` whose version is v1alpha1 (by `apiVersion`
    // or by one of the legacy top-level keys) for the v1alpha1 machine configuration.
    let version = if head.legacy_key {
        Some(V1ALPHA1)
    } else {
        head.api_version.as_deref().filter(|v| !v.is_empty())
    };
    let (kind, version) = match (kind, version) {
        (None | Some(V1ALPHA1), Some(V1ALPHA1)) | (Some(V1ALPHA1), _) => {
            return Err((
                Some(V1ALPHA1.to_owned()),
                "a v1alpha1 machine configuration is not allowed: Omni owns the machine \
                 configuration (use Omni's config patches)"
                    .to_owned(),
            ));
        }
        (None, _) => return Err((None, "no `kind`".to_owned())),
        (Some(kind), None) => {
            return Err((Some(kind.to_owned()), "no `apiVersion`".to_owned()));
        }
        (Some(kind), Some(version)) => (kind, version),
    };
    let id = DocId {
        api_version: version.to_owned(),
        kind: kind.to_owned(),
        name: head.name.clone(),
    };
    let refuse = |reason: String| Err((Some(id.label()), reason));
    match kind {
        "SideroLinkConfig" | "EventSinkConfig" => refuse(format!(
            "{kind} documents are not allowed: Omni's join configuration provides it"
        )),
        "KmsgLogConfig" if id.name.as_deref() == Some(AGENT_KMSG_LOG) => refuse(format!(
            "a KmsgLogConfig named {AGENT_KMSG_LOG:?} is not allowed: the name is the provider's"
        )),
        "TrustedRootsConfig" if id.name.as_deref() == Some(INFRA_PROVIDER_CA) => refuse(format!(
            "a TrustedRootsConfig named {INFRA_PROVIDER_CA:?} is not allowed: the provider \
             serves its own CA under that name in TLS mode"
        )),
        _ => Ok(id),
    }
}

/// What Talos looks at to identify a document: `apiVersion`, `kind`, `name`, and whether
/// a legacy v1alpha1 key is present. Other keys are skipped unread.
#[derive(Debug, Default)]
struct Head {
    api_version: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    legacy_key: bool,
}

impl<'de> Deserialize<'de> for Head {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeadVisitor;
        impl<'de> Visitor<'de> for HeadVisitor {
            type Value = Head;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping (a Talos configuration document)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Head, A::Error> {
                let mut head = Head::default();
                while let Some(key) = map.next_key::<Scalar>()? {
                    match key.0.as_str() {
                        "apiVersion" => {
                            head.api_version = map.next_value::<Option<Scalar>>()?.map(|s| s.0)
                        }
                        "kind" => head.kind = map.next_value::<Option<Scalar>>()?.map(|s| s.0),
                        "name" => head.name = map.next_value::<Option<Scalar>>()?.map(|s| s.0),
                        other => {
                            if matches!(other, "machine" | "cluster" | "debug" | "persist") {
                                head.legacy_key = true;
                            }
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(head)
            }
        }
        deserializer.deserialize_map(HeadVisitor)
    }
}

/// A scalar read as text (Go decodes `kind: 1` into a string too).
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// One document's text and where it starts.
#[derive(Debug, PartialEq, Eq)]
struct Chunk {
    /// 1-based line of its first non-blank line.
    line: usize,
    /// Its lines, each ending with a newline, without separators and without leading or
    /// trailing blank lines.
    text: String,
}

/// Whether `line` starts with the three-character marker `marker` as a whole token.
fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// Split YAML `text` into its documents at `---` and `...` lines (column 0: inside any
/// scalar such a line would be a syntax error, so the split is exact). Documents made
/// only of blank lines, comments and directives are dropped.
fn split_documents(text: &str) -> Vec<Chunk> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut chunks = Vec::new();
    let mut lines: Vec<(usize, &str)> = Vec::new();
    let flush = |lines: &mut Vec<(usize, &str)>, chunks: &mut Vec<Chunk>| {
        let meaningful = |l: &&(usize, &str)| {
            let t = l.1.trim_start();
            !(t.is_empty() || t.starts_with('#') || l.1.starts_with('%'))
        };
        if lines.iter().any(|l| meaningful(&l)) {
            let first = lines
                .iter()
                .position(|l| !l.1.trim().is_empty())
                .unwrap_or(0);
            let last = lines
                .iter()
                .rposition(|l| !l.1.trim().is_empty())
                .unwrap_or(0);
            let mut text = String::new();
            for (_, l) in &lines[first..=last] {
                text.push_str(l);
                text.push('\n');
            }
            chunks.push(Chunk {
                line: lines[first].0,
                text,
            });
        }
        lines.clear();
    };
    for (i, raw) in text.lines().enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if is_marker(line, "---") {
            flush(&mut lines, &mut chunks);
            // Content on the marker line (`--- {a: 1}`) belongs to the new document.
            let rest = line[3..].trim_start();
            if !rest.is_empty() {
                lines.push((i + 1, rest));
            }
        } else if is_marker(line, "...") {
            flush(&mut lines, &mut chunks);
        } else {
            lines.push((i + 1, line));
        }
    }
    flush(&mut lines, &mut chunks);
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironboot_proto::omni;

    use crate::provider::boot_plan::JoinConfig;
    use crate::provider::omni::client::{Metadata, Resource};
    use crate::provider::omni::watch::Event;

    const SAMPLE: &str = "\
# Operator additions.
apiVersion: v1alpha1
kind: KmsgLogConfig
name: site-logs
url: tcp://[fd00::1]:5000
---
apiVersion: v1alpha1
kind: TrustedRootsConfig
name: site-ca
certificates: |
  -----BEGIN CERTIFICATE-----
  # not a comment: block content
  -----END CERTIFICATE-----

---
# empty document, skipped
---
apiVersion: v1alpha1
kind: ResolverConfig
nameservers:
  - address: 10.0.0.53
...
";

    fn problems(text: &str) -> Vec<DocumentProblem> {
        ExtraDocuments::parse(text).unwrap_err()
    }

    #[test]
    fn accepts_other_documents_in_order_keeping_their_text() {
        let docs = ExtraDocuments::parse(SAMPLE).unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(
            docs.to_string(),
            "KmsgLogConfig/site-logs, TrustedRootsConfig/site-ca, ResolverConfig"
        );
        let texts: Vec<&str> = docs.texts().collect();
        assert!(
            texts[0].starts_with("# Operator additions.\napiVersion"),
            "{texts:?}"
        );
        assert!(
            texts[1].contains("  # not a comment: block content\n")
                && texts[1].ends_with("-----END CERTIFICATE-----\n"),
            "{texts:?}"
        );
        assert_eq!(
            texts[2],
            "apiVersion: v1alpha1\nkind: ResolverConfig\nnameservers:\n  - address: 10.0.0.53\n"
        );
        // Debug names kinds only, never contents.
        let debug = format!("{docs:?}");
        assert!(
            !debug.contains("BEGIN") && debug.contains("site-ca"),
            "{debug}"
        );
    }

    #[test]
    fn refuses_each_kind_upstream_refuses_naming_every_offender() {
        let text = "\
version: v1alpha1
machine:
  type: worker
---
apiVersion: v1alpha1
kind: SideroLinkConfig
apiUrl: https://omni.example:8090?jointoken=x
---
apiVersion: v1alpha1
kind: EventSinkConfig
endpoint: '[fd00::1]:8090'
---
apiVersion: v1alpha1
kind: KmsgLogConfig
name: siderolink-agent-kmsg-log
url: tcp://[fd00::1]:8092
---
apiVersion: v1alpha1
kind: TrustedRootsConfig
name: infra-provider-ca
certificates: x
---
apiVersion: v1alpha1
kind: KmsgLogConfig
name: fine
url: tcp://[fd00::1]:8093
";
        let p = problems(text);
        let summary: Vec<(usize, usize, Option<&str>)> = p
            .iter()
            .map(|p| (p.index, p.line, p.label.as_deref()))
            .collect();
        assert_eq!(
            summary,
            [
                (1, 1, Some("v1alpha1")),
                (2, 5, Some("SideroLinkConfig")),
                (3, 9, Some("EventSinkConfig")),
                (4, 13, Some("KmsgLogConfig/siderolink-agent-kmsg-log")),
                (5, 18, Some("TrustedRootsConfig/infra-provider-ca")),
            ]
        );
        assert!(p[0].reason.contains("Omni owns"), "{}", p[0]);
    }

    #[test]
    fn v1alpha1_is_recognised_as_talos_does() {
        for doc in [
            "version: v1alpha1\ncluster:\n  clusterName: x\n",
            "debug: false\n",
            "persist: true\n",
            "apiVersion: v1alpha1\nfoo: 1\n",
            "apiVersion: v1alpha1\nkind: v1alpha1\n",
        ] {
            let p = problems(doc);
            assert_eq!(p[0].label.as_deref(), Some("v1alpha1"), "{doc}: {p:?}");
        }
        // `version:` alone is not enough for Talos either: it wants a kind.
        let p = problems("version: v1alpha1\n");
        assert_eq!(p[0].reason, "no `kind`");
    }

    #[test]
    fn malformed_documents_are_refused_with_their_position() {
        let p = problems("kind: Foo\n---\n- a\n- b\n---\napiVersion: v1alpha1\nkind: [x\n");
        assert_eq!(p.len(), 3, "{p:?}");
        assert_eq!((p[0].index, p[0].reason.as_str()), (1, "no `apiVersion`"));
        assert_eq!((p[1].index, p[1].line), (2, 3));
        assert!(p[1].reason.starts_with("not a YAML mapping"), "{}", p[1]);
        assert_eq!((p[2].index, p[2].line), (3, 6));
    }

    #[test]
    fn duplicates_are_refused_as_talos_does() {
        let doc = "apiVersion: v1alpha1\nkind: KmsgLogConfig\nname: a\nurl: tcp://x:1\n";
        let p = problems(&format!("{doc}---\n{doc}"));
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].index, p[0].line), (2, 6));
        assert!(p[0].reason.contains("second document"), "{}", p[0]);
        let other = doc.replace("name: a", "name: b");
        assert_eq!(
            ExtraDocuments::parse(&format!("{doc}---\n{other}"))
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn empty_null_and_comment_only_files_give_no_documents() {
        for text in [
            "",
            "\n\n",
            "# nothing\n",
            "---\n---\n",
            "~\n",
            "---\nnull\n...\n",
        ] {
            let docs = ExtraDocuments::parse(text).unwrap();
            assert!(docs.is_empty(), "{text:?}");
        }
    }

    #[test]
    fn split_handles_markers_crlf_bom_and_directives() {
        let chunks = split_documents(
            "\u{feff}%YAML 1.2\r\n--- {apiVersion: v1alpha1, kind: A}\r\n---\r\n\r\nb: 1\r\n\r\n...\r\n",
        );
        assert_eq!(
            chunks,
            [
                Chunk {
                    line: 2,
                    text: "{apiVersion: v1alpha1, kind: A}\n".to_owned()
                },
                Chunk {
                    line: 5,
                    text: "b: 1\n".to_owned()
                },
            ]
        );
        // `----` and `---x` are not markers.
        assert_eq!(split_documents("a: |\n  ----\n---x: 1\n").len(), 1);
    }

    #[test]
    fn load_names_the_flag_the_file_and_the_offending_document() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("extra.yaml");
        std::fs::write(
            &path,
            "apiVersion: v1alpha1\nkind: EventSinkConfig\nendpoint: x\n",
        )
        .unwrap();
        let msg = ExtraDocuments::load(&path).unwrap_err().to_string();
        assert!(msg.starts_with("--extra-machine-config-path "), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(
            msg.contains("document 1 (line 1) EventSinkConfig: "),
            "{msg}"
        );

        std::fs::write(&path, SAMPLE).unwrap();
        assert_eq!(ExtraDocuments::load(&path).unwrap().len(), 3);

        let missing = dir.path().join("nope.yaml");
        let e = ExtraDocuments::load(&missing).unwrap_err();
        assert!(matches!(e, ExtraDocumentsError::Read { .. }), "{e}");
        assert!(e.to_string().contains("nope.yaml"), "{e}");

        std::fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
        let e = ExtraDocuments::load(&path).unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }

    fn omni_event(config: &str) -> Event<omni::ProviderJoinConfigSpec> {
        Event::Created(Resource {
            metadata: Metadata {
                id: "bare-metal".to_owned(),
                ..Metadata::default()
            },
            spec: omni::ProviderJoinConfigSpec {
                config: Some(omni::JoinConfig {
                    kernel_args: vec![],
                    config: config.to_owned(),
                }),
                join_token: "t".to_owned(),
            },
        })
    }

    const OMNI_DOCS: &str = "apiVersion: v1alpha1\nkind: SideroLinkConfig\napiUrl: https://omni.example:8090?jointoken=t\n---\napiVersion: v1alpha1\nkind: EventSinkConfig\nendpoint: '[fd00::1]:8090'\n";

    #[test]
    fn served_configuration_is_omni_then_ca_then_extras_and_parses() {
        let join = JoinConfig::new("bare-metal");
        let extra = ExtraDocuments::parse(SAMPLE).unwrap();
        join.set_extra_documents(extra.clone());
        assert_eq!(
            join.current(),
            None,
            "nothing is served before Omni's documents"
        );
        join.apply(omni_event(OMNI_DOCS));
        let served = String::from_utf8(join.current().unwrap().to_vec()).unwrap();
        assert!(served.starts_with(OMNI_DOCS), "{served}");
        assert!(served.ends_with("  - address: 10.0.0.53\n"), "{served}");

        join.set_trusted_ca(Some(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_owned(),
        ));
        let served = String::from_utf8(join.current().unwrap().to_vec()).unwrap();
        let kinds: Vec<String> = served
            .lines()
            .filter_map(|l| l.strip_prefix("kind: ").map(str::to_owned))
            .collect();
        assert_eq!(
            kinds,
            [
                "SideroLinkConfig",
                "EventSinkConfig",
                "TrustedRootsConfig",
                "KmsgLogConfig",
                "TrustedRootsConfig",
                "ResolverConfig"
            ]
        );
        let ca_at = served.find("name: infra-provider-ca").unwrap();
        assert!(ca_at < served.find("name: site-logs").unwrap());
        // Every document is a mapping of its own: the separators are in place.
        let docs: Vec<std::collections::BTreeMap<String, IgnoredAny>> =
            serde_saphyr::from_multiple(&served).unwrap();
        assert_eq!(docs.len(), 6, "{served}");

        // Omni's documents without a final newline or with a trailing separator.
        for omni in [OMNI_DOCS.trim_end(), &format!("{OMNI_DOCS}---\n")] {
            join.apply(omni_event(omni));
            let served = String::from_utf8(join.current().unwrap().to_vec()).unwrap();
            let docs: Vec<std::collections::BTreeMap<String, IgnoredAny>> =
                serde_saphyr::from_multiple(&served).unwrap();
            assert_eq!(docs.len(), 6, "{served}");
        }

        join.set_extra_documents(ExtraDocuments::default());
        join.set_trusted_ca(None);
        let served = String::from_utf8(join.current().unwrap().to_vec()).unwrap();
        assert_eq!(served, format!("{OMNI_DOCS}---\n"));
    }

    #[test]
    fn tls_inline_configuration_carries_the_extra_documents() {
        use crate::boot::machine::Arch;
        use crate::provider::boot_plan::AgentBootSource;
        use crate::provider::boot_plan::{AgentModeOptions, AgentTlsBoot, OmniBoot};
        use crate::provider::image_factory::ImageFactorySettings;
        use base64::Engine as _;

        let omni = OmniBoot::new(
            "bare-metal",
            std::net::Ipv4Addr::new(10, 0, 0, 1).into(),
            50042,
            &AgentBootSource::ImageFactory(ImageFactorySettings {
                base_url: "http://127.0.0.1:9".into(),
                pxe_base_url: "http://127.0.0.1:9".into(),
                agent_mode_talos_version: "v1.13.7".into(),
                secure_boot: false,
            }),
        )
        .unwrap()
        .with_extra_documents(ExtraDocuments::parse(SAMPLE).unwrap())
        .with_agent_options(AgentModeOptions {
            test_mode: false,
            skip_verify: false,
            tls: Some(AgentTlsBoot {
                port: 50043,
                ca_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_owned(),
            }),
        });
        omni.join.apply(omni_event(OMNI_DOCS));
        let args = omni.decider.kernel_args(Arch::Amd64, true, &[]).unwrap();
        let value = args[1].strip_prefix("talos.config.inline=").unwrap();
        let compressed = base64::engine::general_purpose::STANDARD
            .decode(value)
            .unwrap();
        let inline = String::from_utf8(zstd::decode_all(compressed.as_slice()).unwrap()).unwrap();
        assert_eq!(inline.as_bytes(), omni.join.current().unwrap());
        assert!(
            inline.contains("name: infra-provider-ca") && inline.contains("name: site-logs"),
            "{inline}"
        );
    }
}
