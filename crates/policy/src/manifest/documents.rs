//! Splitting a text into documents and parsing each into a YAML value, keeping each
//! document's own text (the store keeps what the user wrote) and numbering documents the way
//! a YAML parser counts them.

use serde_yaml::Value;

/// One document of the input.
#[derive(Debug)]
pub(super) struct SourceDocument {
    /// 1-based position among the documents of the text.
    pub number: usize,
    /// The document's text as written: its lines without the `---` separator, or the text of
    /// one JSON value.
    pub manifest: String,
    pub content: Content,
}

#[derive(Debug)]
pub(super) enum Content {
    /// Only comments and whitespace (or an explicit null).
    Empty,
    Parsed(Value),
    /// Not YAML/JSON; the reason carries the line and column in the whole text.
    Syntax(String),
}

pub(super) fn split(text: &str) -> Vec<SourceDocument> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if !looks_like_json(text) {
        return yaml_documents(text);
    }
    let json = json_documents(text);
    let json_failed = json
        .iter()
        .any(|document| matches!(document.content, Content::Syntax(_)));
    if !json_failed {
        return json;
    }
    // A text starting with `{` may also be YAML in flow style (`{apiVersion: v1, ...}`).
    let yaml = yaml_documents(text);
    let yaml_failed = yaml
        .iter()
        .any(|document| matches!(document.content, Content::Syntax(_)));
    if yaml_failed { json } else { yaml }
}

fn looks_like_json(text: &str) -> bool {
    text.trim_start().starts_with(['{', '['])
}

/// A stream of JSON values (one object, or several one after the other). Parsing stops at the
/// first syntax error: there is no telling where the next value would start.
fn json_documents(text: &str) -> Vec<SourceDocument> {
    let mut documents = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut start = 0;
    loop {
        let number = documents.len() + 1;
        match stream.next() {
            None => break,
            Some(Ok(value)) => {
                let end = stream.byte_offset();
                let manifest = text.get(start..end).unwrap_or_default().trim().to_string();
                start = end;
                let content = if value.is_null() {
                    Content::Empty
                } else {
                    Content::Parsed(value)
                };
                documents.push(SourceDocument {
                    number,
                    manifest,
                    content,
                });
            }
            Some(Err(error)) => {
                documents.push(SourceDocument {
                    number,
                    manifest: text.get(start..).unwrap_or_default().trim().to_string(),
                    content: Content::Syntax(error.to_string()),
                });
                break;
            }
        }
    }
    documents
}

/// The lines of one YAML document and where they start in the whole text.
#[derive(Debug, Default)]
struct Chunk {
    /// 0-based line of the chunk's first line in the whole text.
    first_line: usize,
    text: String,
    /// Opened by `---`: a document even when empty, as YAML counts it. The text before the
    /// first `---` (or after a `...`) is a document only if it has content.
    explicit: bool,
}

fn yaml_documents(text: &str) -> Vec<SourceDocument> {
    let mut chunks = Vec::new();
    let mut current = Chunk::default();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        if let Some(rest) = document_start(bare) {
            chunks.push(std::mem::take(&mut current));
            current = Chunk {
                first_line: index + 1,
                text: String::new(),
                explicit: true,
            };
            // `--- value` starts the document on the separator line itself.
            let rest = rest.trim_start();
            if !rest.is_empty() && !rest.starts_with('#') {
                current.first_line = index;
                current.text = format!("{rest}\n");
            }
        } else if bare == "..." {
            chunks.push(std::mem::take(&mut current));
            current = Chunk {
                first_line: index + 1,
                ..Chunk::default()
            };
        } else {
            current.text.push_str(line);
        }
    }
    chunks.push(current);

    let mut documents = Vec::new();
    for chunk in chunks {
        let has_content = chunk.text.lines().any(is_content_line);
        if !chunk.explicit && !has_content {
            continue;
        }
        let content = if has_content {
            parse_yaml(&chunk)
        } else {
            Content::Empty
        };
        documents.push(SourceDocument {
            number: documents.len() + 1,
            manifest: chunk.text,
            content,
        });
    }
    documents
}

/// `Some(rest of the line)` when the line is a `---` document marker.
fn document_start(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("---")?;
    (rest.is_empty() || rest.starts_with([' ', '\t'])).then_some(rest)
}

/// Anything but blank lines, comments and directives (`%YAML 1.2`).
fn is_content_line(line: &str) -> bool {
    let trimmed = line.trim();
    !(trimmed.is_empty() || trimmed.starts_with('#') || line.starts_with('%'))
}

fn parse_yaml(chunk: &Chunk) -> Content {
    match serde_yaml::from_str::<Value>(&chunk.text) {
        Ok(Value::Null) => Content::Empty,
        Ok(value) => Content::Parsed(value),
        Err(error) => {
            // Positions in the error are relative to the chunk. Parsing again behind blank
            // lines makes them positions in the whole text; errors are rare, so the second
            // parse is cheaper than rewriting libyaml's messages.
            let mut padded = "\n".repeat(chunk.first_line);
            padded.push_str(&chunk.text);
            let reason = match serde_yaml::from_str::<Value>(&padded) {
                Err(positioned) => positioned.to_string(),
                Ok(_) => error.to_string(),
            };
            Content::Syntax(reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(text: &str) -> Vec<(usize, String, &'static str)> {
        split(text)
            .into_iter()
            .map(|d| {
                let content = match d.content {
                    Content::Empty => "empty",
                    Content::Parsed(_) => "parsed",
                    Content::Syntax(_) => "syntax",
                };
                (d.number, d.manifest, content)
            })
            .collect()
    }

    #[test]
    fn numbering_follows_yaml() {
        let got = summary("# header\n---\na: 1\n---\n# nothing\n---\nb: 2\n");
        assert_eq!(
            got,
            vec![
                (1, "a: 1\n".to_string(), "parsed"),
                (2, "# nothing\n".to_string(), "empty"),
                (3, "b: 2\n".to_string(), "parsed"),
            ]
        );
        let got = summary("a: 1\n--- # second\r\nb: 2\r\n...\n");
        assert_eq!(got[0], (1, "a: 1\n".to_string(), "parsed"));
        assert_eq!(got[1], (2, "b: 2\r\n".to_string(), "parsed"));
        assert_eq!(got.len(), 2);
        assert_eq!(summary("--- {a: 1}\n")[0].2, "parsed");
        assert!(summary("  \n# only a comment\n").is_empty());
        assert_eq!(summary("a: 1\n----\n")[0].2, "syntax");
    }

    #[test]
    fn syntax_errors_name_lines_of_the_whole_text() {
        let docs = split("a: 1\n---\nb: 2\n---\nc: [1\n");
        let Content::Syntax(reason) = &docs[2].content else {
            panic!("expected a syntax error, got {:?}", docs[2]);
        };
        assert!(reason.contains("line 6"), "{reason}");
        assert!(reason.contains("line 5"), "{reason}");
    }

    #[test]
    fn json_streams_and_flow_yaml() {
        let got = summary("{\"a\": 1}\n{\"b\": 2}\n");
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].1, "{\"b\": 2}");
        assert_eq!(summary("{a: 1, b: [x]}\n")[0].2, "parsed");
        let docs = split("{\"a\": 1,\n \"b\" 2}");
        let Content::Syntax(reason) = &docs[0].content else {
            panic!("expected a syntax error");
        };
        assert!(reason.contains("line 2"), "{reason}");
    }
}
