//! Corrections, kept durably: `REPO/.feedback/NAME/log.jsonl`, one JSON line per correction
//! (appended and synced before it is acknowledged), and `inputs/HASH` for each image's bytes
//! (written and synced first, so a line never names bytes that are not there).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::AdaptError;

/// What was corrected: an image's bytes or a text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Corrected {
    Image(Vec<u8>),
    Text(String),
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The right label.
    pub label: String,
    /// An image's file under `inputs/` (its BLAKE3), or the text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The digest of the version that gave the answer corrected, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Seconds since the Unix epoch.
    pub time: u64,
}

/// The feedback log of one model.
pub struct FeedbackLog {
    dir: PathBuf,
    append: Mutex<()>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> AdaptError + '_ {
    move |e| AdaptError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl FeedbackLog {
    /// The log of model `name` in the repository `repo`.
    pub fn new(repo: &Path, name: &str) -> FeedbackLog {
        FeedbackLog {
            dir: repo.join(".feedback").join(name),
            append: Mutex::new(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn log(&self) -> PathBuf {
        self.dir.join("log.jsonl")
    }

    /// Records a correction; returns its number in the log (from 1) once it is on disk.
    pub fn record(
        &self,
        what: &Corrected,
        label: &str,
        version: Option<String>,
    ) -> Result<usize, AdaptError> {
        let _one_at_a_time = self.append.lock().unwrap_or_else(|p| p.into_inner());
        let inputs = self.dir.join("inputs");
        std::fs::create_dir_all(&inputs).map_err(io(&inputs))?;
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut entry = Entry {
            label: label.to_string(),
            image: None,
            text: None,
            version,
            time,
        };
        match what {
            Corrected::Image(bytes) => {
                let hash = blake3::hash(bytes).to_hex().to_string();
                let path = inputs.join(&hash);
                if !path.is_file() {
                    let tmp = inputs.join(format!(".{hash}.tmp"));
                    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
                    f.write_all(bytes).map_err(io(&tmp))?;
                    f.sync_all().map_err(io(&tmp))?;
                    std::fs::rename(&tmp, &path).map_err(io(&path))?;
                }
                entry.image = Some(hash);
            }
            Corrected::Text(text) => entry.text = Some(text.clone()),
        }
        let mut line = serde_json::to_string(&entry).expect("serialises");
        line.push('\n');
        let log = self.log();
        // A line cut short by a crash is ended first, so that it spoils only itself.
        let torn = std::fs::read(&log).is_ok_and(|b| b.last().is_some_and(|&c| c != b'\n'));
        if torn {
            line.insert(0, '\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io(&log))?;
        f.write_all(line.as_bytes()).map_err(io(&log))?;
        f.sync_data().map_err(io(&log))?;
        Ok(self.entries()?.0.len())
    }

    /// Every complete entry, in order, and the number of lines that could not be read (a
    /// line cut short by a crash mid-append).
    pub fn entries(&self) -> Result<(Vec<Entry>, usize), AdaptError> {
        let log = self.log();
        let text = match std::fs::read_to_string(&log) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(io(&log)(e)),
        };
        let mut bad = 0;
        let entries = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| match serde_json::from_str::<Entry>(l) {
                Ok(e) => Some(e),
                Err(_) => {
                    bad += 1;
                    None
                }
            })
            .collect();
        Ok((entries, bad))
    }

    /// Where an entry's image bytes are.
    pub fn image_path(&self, hash: &str) -> PathBuf {
        self.dir.join("inputs").join(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrections_are_kept_in_order_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let log = FeedbackLog::new(dir.path(), "m");
        assert_eq!(log.entries().unwrap().0.len(), 0);
        let n = log
            .record(&Corrected::Image(b"pixels".to_vec()), "cat", None)
            .unwrap();
        assert_eq!(n, 1);
        log.record(
            &Corrected::Text("so good".into()),
            "pos",
            Some("abc".into()),
        )
        .unwrap();
        // A crash mid-append leaves half a line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(log.dir().join("log.jsonl"))
            .unwrap();
        f.write_all(b"{\"label\":\"do").unwrap();
        let (entries, bad) = log.entries().unwrap();
        assert_eq!((entries.len(), bad), (2, 1));
        // The next correction is whole even so.
        assert_eq!(
            log.record(&Corrected::Text("meh".into()), "neg", None)
                .unwrap(),
            3
        );
        let (entries, bad) = log.entries().unwrap();
        assert_eq!(bad, 1);
        assert_eq!(entries[2].label, "neg");
        assert_eq!(entries[0].label, "cat");
        let hash = entries[0].image.clone().unwrap();
        assert_eq!(std::fs::read(log.image_path(&hash)).unwrap(), b"pixels");
        assert_eq!(entries[1].text.as_deref(), Some("so good"));
        assert_eq!(entries[1].version.as_deref(), Some("abc"));
    }
}
