//! Text files (or standard input) → a lazy stream of their lines, each one text.
//!
//! Each line is one text: the line ending (`\n` or `\r\n`) is not part of it, a final line
//! without one still counts, and an empty line is the empty text (a vector of its own, so
//! that answers stay aligned with line numbers). A line that is not UTF-8 is an entry with
//! its problem named (file, line and byte), and the other lines go on; so is a file that
//! cannot be opened.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Arc;

/// One line of one input: where it came from, and its text or why it has none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextEntry {
    /// The file as the user named it (`-` for standard input).
    pub path: PathBuf,
    /// Line number in the file, from 1 (0 when the file itself could not be read).
    pub line: usize,
    pub text: Result<Arc<str>, String>,
}

/// The most bytes one line may have; a longer one fails alone (a text model reads at most a
/// few thousand tokens).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// The lines of every argument in turn (`-` or no argument: standard input).
pub struct TextLines {
    args: VecDeque<String>,
    current: Option<(PathBuf, Box<dyn BufRead + Send>, usize)>,
    stdin: Option<Box<dyn BufRead + Send>>,
}

impl TextLines {
    pub fn new(args: Vec<String>, stdin: Option<Box<dyn BufRead + Send>>) -> TextLines {
        let args: VecDeque<String> = if args.is_empty() {
            VecDeque::from(vec!["-".to_string()])
        } else {
            args.into()
        };
        TextLines {
            args,
            current: None,
            stdin,
        }
    }
}

impl Iterator for TextLines {
    type Item = TextEntry;

    fn next(&mut self) -> Option<TextEntry> {
        loop {
            if let Some((path, reader, line)) = &mut self.current {
                let mut buf = Vec::new();
                let read = std::io::Read::take(&mut *reader, MAX_LINE_BYTES as u64 + 2)
                    .read_until(b'\n', &mut buf);
                match read {
                    Ok(0) => {
                        self.current = None;
                        continue;
                    }
                    Ok(_) => {
                        *line += 1;
                        let line = *line;
                        let path = path.clone();
                        if buf.len() > MAX_LINE_BYTES && buf.last() != Some(&b'\n') {
                            // Skip the rest of the over-long line.
                            let mut rest = Vec::new();
                            let _ = self
                                .current
                                .as_mut()
                                .map(|(_, r, _)| r.read_until(b'\n', &mut rest));
                            return Some(TextEntry {
                                path,
                                line,
                                text: Err(format!("line {line} is over {MAX_LINE_BYTES} bytes")),
                            });
                        }
                        if buf.last() == Some(&b'\n') {
                            buf.pop();
                            if buf.last() == Some(&b'\r') {
                                buf.pop();
                            }
                        }
                        let text = String::from_utf8(buf).map(Arc::from).map_err(|e| {
                            format!(
                                "line {line} is not UTF-8 text (invalid byte at {})",
                                e.utf8_error().valid_up_to()
                            )
                        });
                        return Some(TextEntry { path, line, text });
                    }
                    Err(e) => {
                        let entry = TextEntry {
                            path: path.clone(),
                            line: *line + 1,
                            text: Err(format!("cannot read: {e}")),
                        };
                        self.current = None;
                        return Some(entry);
                    }
                }
            }
            let arg = self.args.pop_front()?;
            let path = PathBuf::from(&arg);
            let reader: Box<dyn BufRead + Send> = if arg == "-" {
                match self.stdin.take() {
                    Some(r) => r,
                    None => Box::new(BufReader::new(std::io::stdin())),
                }
            } else {
                match std::fs::File::open(&path) {
                    Ok(f) if f.metadata().is_ok_and(|m| m.is_dir()) => {
                        return Some(TextEntry {
                            path,
                            line: 0,
                            text: Err("is a folder; embed reads the lines of text files".into()),
                        })
                    }
                    Ok(f) => Box::new(BufReader::new(f)),
                    Err(e) => {
                        return Some(TextEntry {
                            path,
                            line: 0,
                            text: Err(format!("cannot open: {e}")),
                        })
                    }
                }
            };
            self.current = Some((path, reader, 0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(bytes: &'static [u8]) -> Vec<TextEntry> {
        TextLines::new(vec!["-".into()], Some(Box::new(bytes))).collect()
    }

    #[test]
    fn every_line_is_one_text_and_bad_ones_fail_alone() {
        let got = lines(b"one\r\n\ntwo \xff three\nlast");
        let texts: Vec<Result<&str, &str>> = got
            .iter()
            .map(|e| e.text.as_deref().map_err(String::as_str))
            .collect();
        assert_eq!(
            texts,
            vec![
                Ok("one"),
                Ok(""),
                Err("line 3 is not UTF-8 text (invalid byte at 4)"),
                Ok("last")
            ]
        );
        assert_eq!(got.iter().map(|e| e.line).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert!(lines(b"").is_empty());
        assert_eq!(lines(b"x\n").len(), 1);
    }

    #[test]
    fn a_missing_file_is_one_entry_and_the_next_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.txt");
        std::fs::write(&file, "hello\n").unwrap();
        let got: Vec<TextEntry> = TextLines::new(
            vec![
                dir.path().join("missing.txt").display().to_string(),
                file.display().to_string(),
            ],
            None,
        )
        .collect();
        assert_eq!(got.len(), 2);
        assert!(got[0].text.as_ref().unwrap_err().starts_with("cannot open"));
        assert_eq!(got[1].text.as_deref(), Ok("hello"));
    }
}
