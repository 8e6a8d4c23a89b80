//! Class names and label groups, and turning a model's output row into ranked predictions.
//!
//! `labels.txt` has one class name per line (line i names class i). A label-groups file maps
//! index ranges of fine classes to a plain coarse word (`dog` for the 118 ImageNet dog breeds),
//! in the format of `shared/models/efficientnet-lite0/coarse.json`:
//! `{"ranges": {"dog": [151, 268], "bird": [[7, 24], [80, 100]]}}`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::manifest::Activation;
use crate::ModelError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels {
    names: Vec<String>,
}

impl Labels {
    pub fn parse(file: &Path, text: &str) -> Result<Labels, ModelError> {
        let names: Vec<String> = text
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect();
        // A trailing newline is normal; a blank line inside the file would shift every index.
        if let Some(line) = names.iter().position(|n| n.trim().is_empty()) {
            return Err(ModelError::InvalidFile {
                file: file.to_path_buf(),
                reason: format!("line {} is blank: every line must name one class", line + 1),
            });
        }
        if names.is_empty() {
            return Err(ModelError::InvalidFile {
                file: file.to_path_buf(),
                reason: "has no class names".into(),
            });
        }
        Ok(Labels { names })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, class_idx: usize) -> Option<&str> {
        self.names.get(class_idx).map(String::as_str)
    }
}

/// Coarse names for ranges of class indices. No class belongs to two groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelGroups {
    /// `group_of[class_idx]` is the index into `names`, if the class is grouped.
    group_of: Vec<Option<u16>>,
    names: Vec<String>,
}

#[derive(Deserialize)]
struct RawGroups {
    ranges: BTreeMap<String, RawRanges>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawRanges {
    One([usize; 2]),
    Many(Vec<[usize; 2]>),
}

impl LabelGroups {
    pub fn parse(file: &Path, text: &str, n_classes: usize) -> Result<LabelGroups, ModelError> {
        let invalid = |reason: String| ModelError::InvalidFile {
            file: file.to_path_buf(),
            reason,
        };
        let raw: RawGroups = serde_json::from_str(text)
            .map_err(|e| invalid(format!("not a label-groups file: {e}")))?;
        if raw.ranges.len() > usize::from(u16::MAX) {
            return Err(invalid("too many groups".into()));
        }
        let mut group_of = vec![None; n_classes];
        let mut names = Vec::with_capacity(raw.ranges.len());
        for (group_idx, (name, ranges)) in raw.ranges.into_iter().enumerate() {
            let ranges = match ranges {
                RawRanges::One(r) => vec![r],
                RawRanges::Many(rs) => rs,
            };
            for [first, last] in ranges {
                if first > last || last >= n_classes {
                    return Err(invalid(format!(
                        "group `{name}`: range [{first}, {last}] is not within 0..{n_classes}"
                    )));
                }
                for slot in &mut group_of[first..=last] {
                    if let Some(other) = *slot {
                        let other: &String = &names[usize::from(other)];
                        return Err(invalid(format!(
                            "group `{name}` overlaps group `{other}` at class {first}..={last}"
                        )));
                    }
                    *slot = Some(group_idx as u16);
                }
            }
            names.push(name);
        }
        Ok(LabelGroups { group_of, names })
    }

    pub fn group(&self, class_idx: usize) -> Option<&str> {
        let g = (*self.group_of.get(class_idx)?)?;
        Some(&self.names[usize::from(g)])
    }
}

/// One ranked class of one input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    pub class_idx: usize,
    pub label: String,
    pub probability: f32,
}

/// What classification returns for one input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// The plain word for the top class: its group name when it has one, else its label.
    pub display_label: String,
    /// The top classes, best first.
    pub top: Vec<ClassScore>,
}

/// Turns one output row into a [`Classification`] with the best `top_k` classes.
pub fn classify_row(
    row: &[f32],
    activation: Activation,
    top_k: usize,
    labels: Option<&Labels>,
    groups: Option<&LabelGroups>,
) -> Classification {
    let probabilities = match activation {
        Activation::Softmax => softmax(row),
        Activation::Sigmoid => row.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
        Activation::None => row.to_vec(),
    };
    let top = top_k_indices(&probabilities, top_k.max(1));
    let label_of = |idx: usize| match labels.and_then(|l| l.name(idx)) {
        Some(name) => name.to_string(),
        None => format!("class {idx}"),
    };
    let top: Vec<ClassScore> = top
        .into_iter()
        .map(|class_idx| ClassScore {
            class_idx,
            label: label_of(class_idx),
            probability: probabilities[class_idx],
        })
        .collect();
    let display_label = match top.first() {
        Some(best) => groups
            .and_then(|g| g.group(best.class_idx))
            .map(str::to_string)
            .unwrap_or_else(|| best.label.clone()),
        None => String::new(),
    };
    Classification { display_label, top }
}

/// Numerically stable softmax. Non-finite logits (a broken model) give non-finite output
/// rather than a panic.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Indices of the `k` largest values, largest first; ties keep the lower index first.
/// NaN sorts last.
pub fn top_k_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let key = |i: usize| {
        if values[i].is_nan() {
            f32::NEG_INFINITY
        } else {
            values[i]
        }
    };
    let order = |&a: &usize, &b: &usize| key(b).total_cmp(&key(a)).then(a.cmp(&b));
    // Select the k best in linear time, then sort only those (a cache hit's whole cost is a
    // few of these).
    if k < idx.len() {
        idx.select_nth_unstable_by(k, order);
        idx.truncate(k);
    }
    idx.sort_by(order);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("g.json")
    }

    #[test]
    fn groups_accept_the_shared_coarse_format() {
        let text = include_str!("../../../models/efficientnet-lite0/label_groups.json");
        let g = LabelGroups::parse(p(), text, 1000).unwrap();
        assert_eq!(g.group(151), Some("dog"));
        assert_eq!(g.group(282), Some("cat"));
        assert_eq!(g.group(90), Some("bird"));
        assert_eq!(g.group(817), Some("car"));
        assert_eq!(g.group(967), None);
    }

    #[test]
    fn overlapping_or_out_of_range_groups_are_rejected() {
        for text in [
            r#"{"ranges": {"a": [1, 5], "b": [5, 6]}}"#,
            r#"{"ranges": {"a": [1, 10]}}"#,
            r#"{"ranges": {"a": [3, 2]}}"#,
            r#"{"groups": {}}"#,
        ] {
            let err = LabelGroups::parse(p(), text, 10).unwrap_err();
            assert!(err.to_string().contains("g.json"), "{err}");
        }
    }

    #[test]
    fn blank_label_lines_are_rejected() {
        assert!(Labels::parse(p(), "a\n\nb\n").is_err());
        assert_eq!(Labels::parse(p(), "a\r\nb\n").unwrap().len(), 2);
    }

    #[test]
    fn classify_row_ranks_and_groups() {
        let labels = Labels::parse(p(), "zero\none\ntwo\nthree\n").unwrap();
        let groups =
            LabelGroups::parse(p(), r#"{"ranges": {"odd": [[1, 1], [3, 3]]}}"#, 4).unwrap();
        let c = classify_row(
            &[0.0, 3.0, 1.0, 2.0],
            Activation::Softmax,
            3,
            Some(&labels),
            Some(&groups),
        );
        assert_eq!(c.display_label, "odd");
        let order: Vec<usize> = c.top.iter().map(|s| s.class_idx).collect();
        assert_eq!(order, vec![1, 3, 2]);
        assert!((c.top[0].probability - 0.6439).abs() < 1e-3);
    }

    #[test]
    fn top_k_handles_nan_and_ties() {
        assert_eq!(
            top_k_indices(&[1.0, f32::NAN, 1.0, 2.0], 4),
            vec![3, 0, 2, 1]
        );
        assert_eq!(top_k_indices(&[1.0], 5), vec![0]);
    }
}
