//! Splitting a multi-document YAML stream at its document markers, so each document can be
//! parsed on its own: in parallel, and only when its text changed since the file was last read.

/// The pieces of `text`, in order, each holding its own `---` / `...` marker lines; every
/// piece is a valid stream by itself (comments alone, one document, or an empty one).
/// None when the stream has directives (`%YAML`, `%TAG`): they reach across documents, so
/// such a stream must be parsed whole.
///
/// A marker is `---` or `...` at the start of a line, followed by a blank or the line's end.
/// YAML forbids content lines of that form inside a document (even in block scalars and
/// quoted strings), so the split never cuts a document.
pub fn split_documents(text: &str) -> Option<Vec<&str>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let line_start = offset;
        offset += line.len();
        if line.starts_with('%') {
            return None;
        }
        if is_marker(line, "---") {
            if line_start > start {
                pieces.push(&text[start..line_start]);
            }
            start = line_start;
        } else if is_marker(line, "...") {
            pieces.push(&text[start..offset]);
            start = offset;
        }
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    Some(pieces)
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits_at_markers_keeping_them() {
        let text = "# head\n---\na: 1\n--- {b: 2}\n---\n...\nc: |\n  ---x\n----\n";
        assert_eq!(
            split_documents(text).unwrap(),
            vec![
                "# head\n",
                "---\na: 1\n",
                "--- {b: 2}\n",
                "---\n...\n",
                "c: |\n  ---x\n----\n"
            ]
        );
        assert_eq!(split_documents("").unwrap(), Vec::<&str>::new());
        assert_eq!(split_documents("a: 1").unwrap(), vec!["a: 1"]);
        assert_eq!(
            split_documents("---\r\na: 1\r\n").unwrap(),
            vec!["---\r\na: 1\r\n"]
        );
    }

    #[test]
    fn directives_need_the_whole_stream() {
        assert_eq!(split_documents("%YAML 1.2\n---\na: 1\n"), None);
    }

    proptest! {
        /// Nothing is lost or reordered, and only a marker can begin a later piece.
        #[test]
        fn pieces_rebuild_the_text(lines in proptest::collection::vec(
            proptest::sample::select(vec!["---", "--- x", "...", "a: 1", "  ---", "----", "", "# c"]), 0..20)
        ) {
            let text = lines.join("\n");
            let pieces = split_documents(&text).unwrap();
            prop_assert_eq!(pieces.concat(), text.clone());
            for pair in pieces.windows(2) {
                let ended = pair[0].split_inclusive('\n').next_back().is_some_and(|l| is_marker(l, "..."));
                prop_assert!(is_marker(pair[1], "---") || ended, "{:?}", pair);
            }
            prop_assert!(pieces.iter().all(|p| !p.is_empty()));
        }
    }
}
