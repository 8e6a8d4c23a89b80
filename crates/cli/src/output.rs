//! Writing results as they arrive, in input order: text (`Image N: label    path`), one JSON
//! document, JSON lines, or CSV. Every format streams, so a run that is interrupted has
//! already written what it computed.

use std::io::Write;

use serde_json::{json, Value};
use singlepoint_cache::CacheStats;
use singlepoint_model::Model;
use singlepoint_runtime::{AnswerSource, ItemResult, RunStats};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Jsonl,
    Csv,
}

pub struct Writer<W: Write> {
    out: W,
    format: Format,
    top_k: usize,
    show_top_k: bool,
    first: bool,
}

impl<W: Write> Writer<W> {
    pub fn new(
        mut out: W,
        format: Format,
        top_k: usize,
        show_top_k: bool,
        model: &Model,
    ) -> std::io::Result<Self> {
        match format {
            Format::Json => {
                let head = json!({
                    "name": model.manifest.name,
                    "version": model.manifest.version,
                    "digest": model.digest.to_hex(),
                });
                write!(out, "{{\"model\": {head}, \"results\": [")?;
            }
            Format::Csv => {
                let mut header = vec![
                    "index".to_string(),
                    "path".into(),
                    "label".into(),
                    "error".into(),
                ];
                for i in 1..=top_k {
                    header.extend([
                        format!("class_{i}"),
                        format!("label_{i}"),
                        format!("probability_{i}"),
                    ]);
                }
                writeln!(out, "{}", header.join(","))?;
            }
            Format::Text | Format::Jsonl => {}
        }
        Ok(Writer {
            out,
            format,
            top_k,
            show_top_k,
            first: true,
        })
    }

    pub fn item(&mut self, result: &ItemResult) -> std::io::Result<()> {
        match self.format {
            Format::Text => self.text(result)?,
            Format::Jsonl => writeln!(self.out, "{}", item_json(result))?,
            Format::Json => {
                let sep = if self.first { "\n  " } else { ",\n  " };
                write!(self.out, "{sep}{}", item_json(result))?;
            }
            Format::Csv => self.csv(result)?,
        }
        self.first = false;
        // Line-buffer only what a person watches; structured output is flushed at the end.
        if self.format == Format::Text {
            self.out.flush()?;
        }
        Ok(())
    }

    fn text(&mut self, result: &ItemResult) -> std::io::Result<()> {
        let Ok(c) = &result.outcome else {
            // Failures go to stderr, named, as they happen; stdout keeps the input's numbering.
            return Ok(());
        };
        write!(
            self.out,
            "Image {}: {:<10}  {}",
            result.idx,
            c.display_label,
            result.path.display()
        )?;
        if self.show_top_k {
            let top: Vec<String> = c
                .top
                .iter()
                .map(|s| format!("{} {:.3}", s.label, s.probability))
                .collect();
            write!(self.out, "    {}", top.join(" | "))?;
        }
        writeln!(self.out)
    }

    fn csv(&mut self, result: &ItemResult) -> std::io::Result<()> {
        let mut row = vec![
            result.idx.to_string(),
            csv_field(&result.path.display().to_string()),
        ];
        match &result.outcome {
            Ok(c) => {
                row.push(csv_field(&c.display_label));
                row.push(String::new());
                for i in 0..self.top_k {
                    match c.top.get(i) {
                        Some(s) => row.extend([
                            s.class_idx.to_string(),
                            csv_field(&s.label),
                            format!("{:.6}", s.probability),
                        ]),
                        None => row.extend([String::new(), String::new(), String::new()]),
                    }
                }
            }
            Err(e) => {
                row.push(String::new());
                row.push(csv_field(&e.to_string()));
                for _ in 0..self.top_k {
                    row.extend([String::new(), String::new(), String::new()]);
                }
            }
        }
        writeln!(self.out, "{}", row.join(","))
    }

    pub fn finish(
        &mut self,
        stats: &RunStats,
        engine: &str,
        cache: Option<&CacheStats>,
    ) -> std::io::Result<()> {
        if self.format == Format::Json {
            let summary = json!({
                "images": stats.items,
                "failed": stats.failed,
                "seconds": stats.wall.as_secs_f64(),
                "engine": engine,
                "model_executions": stats.model_executions,
                "cache": cache.map(|c| json!({
                    "hit_rate": c.hit_rate(),
                    "memory_hits": c.memory_hits,
                    "disk_hits": c.disk_hits,
                    "misses": c.misses,
                    "coalesced": stats.coalesced,
                    "corrupt": c.corrupt,
                })),
            });
            let sep = if self.first { "" } else { "\n" };
            writeln!(self.out, "{sep}], \"summary\": {summary}}}")?;
        }
        self.out.flush()
    }
}

fn item_json(result: &ItemResult) -> Value {
    match &result.outcome {
        Ok(c) => json!({
            "index": result.idx,
            "path": result.path.display().to_string(),
            "cached": result.source == AnswerSource::Cache,
            "label": c.display_label,
            "top_k": c.top.iter().map(|s| json!({
                "class": s.class_idx,
                "label": s.label,
                "probability": s.probability,
            })).collect::<Vec<_>>(),
        }),
        Err(e) => json!({
            "index": result.idx,
            "path": result.path.display().to_string(),
            "error": e.to_string(),
        }),
    }
}

/// RFC 4180 quoting: fields with a comma, quote or line break are quoted, quotes doubled.
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use singlepoint_model::{ClassScore, Classification};
    use singlepoint_runtime::ItemError;
    use std::path::PathBuf;

    fn results() -> Vec<ItemResult> {
        vec![
            ItemResult {
                idx: 0,
                path: PathBuf::from("a, \"b\".png"),
                outcome: Ok(Classification {
                    display_label: "cat".into(),
                    top: vec![ClassScore {
                        class_idx: 282,
                        label: "tiger cat".into(),
                        probability: 0.5,
                    }],
                }),
                source: AnswerSource::Computed,
                frame: None,
                line: None,
            },
            ItemResult {
                idx: 1,
                path: PathBuf::from("bad.jpg"),
                outcome: Err(ItemError::Read("gone".into())),
                source: AnswerSource::Failed,
                frame: None,
                line: None,
            },
        ]
    }

    fn render(format: Format) -> String {
        let model = Model::bundled();
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf, format, 1, true, &model).unwrap();
        for r in results() {
            w.item(&r).unwrap();
        }
        w.finish(&RunStats::default(), "ort", None).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn every_format_renders_successes_and_failures() {
        let text = render(Format::Text);
        assert_eq!(
            text,
            "Image 0: cat         a, \"b\".png    tiger cat 0.500\n"
        );

        let json: Value = serde_json::from_str(&render(Format::Json)).unwrap();
        assert_eq!(json["results"][0]["top_k"][0]["class"], 282);
        assert_eq!(json["results"][1]["error"], "cannot read: gone");
        assert_eq!(json["model"]["name"], "efficientnet-lite0");

        let lines: Vec<Value> = render(Format::Jsonl)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["label"], "cat");

        let csv = render(Format::Csv);
        let rows: Vec<&str> = csv.lines().collect();
        assert_eq!(
            rows[0],
            "index,path,label,error,class_1,label_1,probability_1"
        );
        assert_eq!(
            rows[1],
            "0,\"a, \"\"b\"\".png\",cat,,282,tiger cat,0.500000"
        );
        assert_eq!(rows[2], "1,bad.jpg,,cannot read: gone,,,");
    }
}
