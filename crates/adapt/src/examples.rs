//! Labelled examples: images as a folder per class, texts as a TSV of label and text.

use std::path::{Path, PathBuf};

use crate::AdaptError;

/// One labelled example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Example {
    Image(PathBuf),
    /// A text, with where it came from (`file:line`).
    Text {
        text: String,
        from: String,
    },
}

/// Examples with their classes (sorted names; `labels[i]` indexes `classes`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Examples {
    pub classes: Vec<String>,
    pub items: Vec<Example>,
    pub labels: Vec<usize>,
}

impl Examples {
    /// Reads `path`: a folder (one subfolder of images per class) or a TSV file (`label<TAB>text`
    /// lines; a first line `label<TAB>text` is a header).
    pub fn read(path: &Path) -> Result<Examples, AdaptError> {
        let meta = std::fs::metadata(path).map_err(|e| AdaptError::Examples {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if meta.is_dir() {
            Examples::read_folder(path)
        } else {
            let bytes = std::fs::read(path).map_err(|e| AdaptError::Examples {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            let text = String::from_utf8(bytes).map_err(|_| AdaptError::Examples {
                path: path.to_path_buf(),
                reason: "is neither a folder nor UTF-8 text (a TSV of label and text)".into(),
            })?;
            Examples::parse_tsv(path, &text)
        }
    }

    fn read_folder(dir: &Path) -> Result<Examples, AdaptError> {
        let bad = |reason: String| AdaptError::Examples {
            path: dir.to_path_buf(),
            reason,
        };
        let mut classes: Vec<(String, Vec<PathBuf>)> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| bad(e.to_string()))? {
            let entry = entry.map_err(|e| bad(e.to_string()))?;
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
                .map_err(|e| bad(format!("{}: {e}", path.display())))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && !p
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect();
            files.sort();
            classes.push((name, files));
        }
        classes.sort();
        let mut out = Examples::default();
        for (i, (name, files)) in classes.into_iter().enumerate() {
            out.classes.push(name);
            for f in files {
                out.items.push(Example::Image(f));
                out.labels.push(i);
            }
        }
        out.check(dir, "a folder of images for each class")?;
        Ok(out)
    }

    /// Parses `label<TAB>text` lines (blank lines skipped).
    pub fn parse_tsv(path: &Path, text: &str) -> Result<Examples, AdaptError> {
        let mut rows: Vec<(String, String, String)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() || (n == 0 && line == "label\ttext") {
                continue;
            }
            let Some((label, sentence)) = line.split_once('\t') else {
                return Err(AdaptError::Examples {
                    path: path.to_path_buf(),
                    reason: format!("line {} has no tab between a label and a text", n + 1),
                });
            };
            let label = label.trim();
            if label.is_empty() {
                return Err(AdaptError::Examples {
                    path: path.to_path_buf(),
                    reason: format!("line {} has an empty label", n + 1),
                });
            }
            rows.push((
                label.to_string(),
                sentence.to_string(),
                format!("{}:{}", path.display(), n + 1),
            ));
        }
        let mut classes: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        classes.sort();
        classes.dedup();
        let mut out = Examples {
            classes,
            ..Examples::default()
        };
        for (label, text, from) in rows {
            out.labels
                .push(out.classes.binary_search(&label).expect("collected"));
            out.items.push(Example::Text { text, from });
        }
        out.check(path, "a TSV of label and text")?;
        Ok(out)
    }

    /// Two classes at least, two examples of each at least (one to learn from, one to hold
    /// out in cross-validation).
    fn check(&self, path: &Path, what: &str) -> Result<(), AdaptError> {
        let bad = |reason: String| {
            Err(AdaptError::Examples {
                path: path.to_path_buf(),
                reason,
            })
        };
        match self.classes.len() {
            0 => return bad(format!("holds no examples (expected {what})")),
            1 => {
                return bad(format!(
                    "has one class, `{}`: a classifier needs two at least",
                    self.classes[0]
                ))
            }
            _ => {}
        }
        for (i, class) in self.classes.iter().enumerate() {
            let n = self.count(i);
            if n < 2 {
                return bad(format!(
                    "class `{class}` has {n} example{}: each class needs two at least",
                    if n == 1 { "" } else { "s" }
                ));
            }
        }
        Ok(())
    }

    pub fn count(&self, class: usize) -> usize {
        self.labels.iter().filter(|&&l| l == class).count()
    }

    pub fn is_text(&self) -> bool {
        matches!(self.items.first(), Some(Example::Text { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tsv_is_read_with_sorted_classes() {
        let e = Examples::parse_tsv(
            Path::new("x.tsv"),
            "label\ttext\npos\tgreat\nneg\tbad\r\n\npos\tfine\tyes\nneg\tawful\n",
        )
        .unwrap();
        assert_eq!(e.classes, ["neg", "pos"]);
        assert_eq!(e.labels, [1, 0, 1, 0]);
        assert_eq!(
            e.items[2],
            Example::Text {
                text: "fine\tyes".into(),
                from: "x.tsv:5".into()
            }
        );
    }

    #[test]
    fn one_class_or_one_example_is_refused_by_name() {
        let one = Examples::parse_tsv(Path::new("x.tsv"), "a\tx\na\ty\n").unwrap_err();
        assert!(one.to_string().contains("one class, `a`"), "{one}");
        let single = Examples::parse_tsv(Path::new("x.tsv"), "a\tx\na\ty\nb\tz\n").unwrap_err();
        assert!(
            single.to_string().contains("class `b` has 1 example"),
            "{single}"
        );
        let tabless = Examples::parse_tsv(Path::new("x.tsv"), "a x\n").unwrap_err();
        assert!(
            tabless.to_string().contains("line 1 has no tab"),
            "{tabless}"
        );
        let empty = Examples::parse_tsv(Path::new("x.tsv"), "\n").unwrap_err();
        assert!(empty.to_string().contains("holds no examples"), "{empty}");
    }
}
