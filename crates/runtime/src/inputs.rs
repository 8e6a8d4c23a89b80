//! What the user named on the command line → a lazy stream of image paths, in order.
//!
//! An argument is a file, a folder (walked recursively, sorted by name, hidden entries and
//! files without an image extension skipped), a glob pattern (`'more/*.jpg'`), or `-` (one
//! path per line on standard input). Expansion is lazy, so 100 000 files never sit in memory
//! at once. Problems (a missing path, a pattern with no match, an unreadable folder) are items
//! of the stream, so they are reported in place and the other inputs go on.

use std::collections::VecDeque;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// File extensions a folder walk picks up (case-insensitive). A file named explicitly is read
/// whatever its extension: formats are recognised by content.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// A problem with an input argument rather than with an image.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct InputError {
    pub reason: String,
}

/// One entry of the stream: the path as the user will see it, and the path's problem if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputEntry {
    pub path: PathBuf,
    pub problem: Option<InputError>,
}

impl InputEntry {
    fn ok(path: PathBuf) -> InputEntry {
        InputEntry {
            path,
            problem: None,
        }
    }

    fn failed(path: impl Into<PathBuf>, reason: impl Into<String>) -> InputEntry {
        InputEntry {
            path: path.into(),
            problem: Some(InputError {
                reason: reason.into(),
            }),
        }
    }
}

/// Video file extensions a folder walk picks up when the run takes videos
/// ([`Inputs::with_videos`]); such files are decoded into frames ([`crate::video`]).
pub const VIDEO_EXTENSIONS: &[&str] = &["mp4", "avi", "mkv", "webm", "mov", "m4v"];

/// Audio file extensions a folder walk picks up for a speech run ([`Inputs::audio`]).
pub const AUDIO_EXTENSIONS: &[&str] = &["wav", "flac", "mp3", "ogg", "oga"];

/// What a folder walk picks up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Media {
    Images,
    ImagesAndVideos,
    Audio,
}

impl Media {
    fn accepts(self, path: &Path) -> bool {
        match self {
            Media::Images => has_image_extension(path),
            Media::ImagesAndVideos => has_image_extension(path) || has_video_extension(path),
            Media::Audio => has_extension(path, AUDIO_EXTENSIONS),
        }
    }

    fn none_found(self) -> String {
        match self {
            Media::Images => format!(
                "folder holds no images (looked for .{})",
                IMAGE_EXTENSIONS.join(", .")
            ),
            Media::ImagesAndVideos => format!(
                "folder holds no images or videos (looked for .{}, .{})",
                IMAGE_EXTENSIONS.join(", ."),
                VIDEO_EXTENSIONS.join(", .")
            ),
            Media::Audio => format!(
                "folder holds no audio files (looked for .{})",
                AUDIO_EXTENSIONS.join(", .")
            ),
        }
    }
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

pub fn has_image_extension(path: &Path) -> bool {
    has_extension(path, IMAGE_EXTENSIONS)
}

/// Whether a file is taken for a video by its name (mp4, avi, mkv, webm, mov, m4v).
pub fn has_video_extension(path: &Path) -> bool {
    has_extension(path, VIDEO_EXTENSIONS)
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| n.starts_with('.') && n != "." && n != "..")
}

fn looks_like_glob(arg: &str) -> bool {
    arg.contains(['*', '?', '['])
}

/// The lazy stream of [`InputEntry`] for a list of arguments.
pub struct Inputs {
    args: VecDeque<String>,
    stdin: Option<Box<dyn BufRead + Send>>,
    current: Option<Box<dyn Iterator<Item = InputEntry> + Send>>,
    media: Media,
}

impl Inputs {
    /// `stdin` is read when an argument is `-`.
    pub fn new(args: Vec<String>, stdin: Option<Box<dyn BufRead + Send>>) -> Inputs {
        Inputs {
            args: args.into(),
            stdin,
            current: None,
            media: Media::Images,
        }
    }

    /// Folder walks pick up video files too (for a run that decodes them into frames).
    pub fn with_videos(mut self) -> Inputs {
        self.media = Media::ImagesAndVideos;
        self
    }

    /// Folder walks pick up audio files instead of images (for a speech run).
    pub fn audio(mut self) -> Inputs {
        self.media = Media::Audio;
        self
    }

    fn expand(&mut self, arg: String) -> Box<dyn Iterator<Item = InputEntry> + Send> {
        if arg == "-" {
            return match self.stdin.take() {
                Some(reader) => Box::new(stdin_lines(reader)),
                None => Box::new(std::iter::once(InputEntry::failed(
                    "-",
                    "standard input was already read (`-` given twice)",
                ))),
            };
        }
        let path = PathBuf::from(&arg);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => Box::new(walk_folder(path, self.media)),
            Ok(_) => Box::new(std::iter::once(InputEntry::ok(path))),
            Err(_) if looks_like_glob(&arg) => Box::new(expand_glob(arg)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Box::new(std::iter::once(
                InputEntry::failed(path, "no such file or folder"),
            )),
            Err(e) => Box::new(std::iter::once(InputEntry::failed(path, e.to_string()))),
        }
    }
}

impl Iterator for Inputs {
    type Item = InputEntry;

    fn next(&mut self) -> Option<InputEntry> {
        loop {
            if let Some(current) = &mut self.current {
                if let Some(entry) = current.next() {
                    return Some(entry);
                }
                self.current = None;
            }
            let arg = self.args.pop_front()?;
            self.current = Some(self.expand(arg));
        }
    }
}

fn stdin_lines(reader: Box<dyn BufRead + Send>) -> impl Iterator<Item = InputEntry> + Send {
    reader.lines().filter_map(|line| match line {
        Ok(line) => {
            let line = line.trim_end_matches('\r');
            (!line.trim().is_empty()).then(|| InputEntry::ok(PathBuf::from(line)))
        }
        Err(e) => Some(InputEntry::failed(
            "-",
            format!("cannot read standard input: {e}"),
        )),
    })
}

fn walk_folder(root: PathBuf, media: Media) -> impl Iterator<Item = InputEntry> + Send {
    let walker = walkdir::WalkDir::new(&root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !is_hidden(e.file_name()));
    let mut found_any = false;
    let mut done = false;
    let mut entries = walker.filter_map(move |entry| match entry {
        Ok(e) if e.file_type().is_file() && media.accepts(e.path()) => {
            Some(InputEntry::ok(e.into_path()))
        }
        Ok(_) => None,
        Err(e) => {
            let path = e
                .path()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("?"));
            let reason = match e.io_error() {
                Some(io) => io.to_string(),
                None => e.to_string(),
            };
            Some(InputEntry::failed(
                path,
                format!("cannot read folder: {reason}"),
            ))
        }
    });
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match entries.next() {
            Some(entry) => {
                found_any = true;
                Some(entry)
            }
            None => {
                done = true;
                (!found_any).then(|| InputEntry::failed(root.clone(), media.none_found()))
            }
        }
    })
}

fn expand_glob(pattern: String) -> Box<dyn Iterator<Item = InputEntry> + Send> {
    let paths = match glob::glob(&pattern) {
        Ok(paths) => paths,
        Err(e) => {
            return Box::new(std::iter::once(InputEntry::failed(
                pattern,
                format!("invalid pattern: {e}"),
            )))
        }
    };
    let mut found_any = false;
    let mut done = false;
    let mut entries = paths.filter_map(|p| match p {
        Ok(path) if path.is_file() => Some(InputEntry::ok(path)),
        Ok(_) => None,
        Err(e) => Some(InputEntry::failed(
            e.path().to_path_buf(),
            e.error().to_string(),
        )),
    });
    Box::new(std::iter::from_fn(move || {
        if done {
            return None;
        }
        match entries.next() {
            Some(entry) => {
                found_any = true;
                Some(entry)
            }
            None => {
                done = true;
                (!found_any)
                    .then(|| InputEntry::failed(pattern.clone(), "pattern matched no files"))
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(entries: &[InputEntry], root: &Path) -> Vec<String> {
        entries
            .iter()
            .map(|e| {
                let p = e
                    .path
                    .strip_prefix(root)
                    .unwrap_or(&e.path)
                    .display()
                    .to_string();
                match &e.problem {
                    Some(problem) => format!("{p}: {}", problem.reason),
                    None => p,
                }
            })
            .collect()
    }

    #[test]
    fn files_folders_globs_and_stdin_expand_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in [
            "a/2.jpg",
            "a/1.PNG",
            "a/sub/3.webp",
            "a/notes.txt",
            "a/.hidden.jpg",
            "a/.git/x.jpg",
            "b/x.gif",
            "b/y.gif",
            "c.txt",
        ] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"x").unwrap();
        }
        std::fs::create_dir_all(root.join("empty")).unwrap();
        let s = |p: &str| root.join(p).display().to_string();
        let stdin = format!("{}\n\n{}\n", s("c.txt"), s("b/x.gif"));
        let args = vec![
            s("a"),
            s("b/*.gif"),
            s("c.txt"),
            "-".into(),
            s("missing.jpg"),
            s("z*.png"),
            s("empty"),
        ];
        let entries: Vec<_> =
            Inputs::new(args, Some(Box::new(std::io::Cursor::new(stdin)))).collect();
        assert_eq!(
            names(&entries, root),
            vec![
                "a/1.PNG",
                "a/2.jpg",
                "a/sub/3.webp",
                "b/x.gif",
                "b/y.gif",
                "c.txt",
                "c.txt",
                "b/x.gif",
                "missing.jpg: no such file or folder",
                "z*.png: pattern matched no files",
                "empty: folder holds no images (looked for .jpg, .jpeg, .png, .webp, .gif, .bmp, .tif, .tiff)",
            ]
        );
    }

    #[test]
    fn stdin_given_twice_is_an_error_not_a_hang() {
        let entries: Vec<_> = Inputs::new(
            vec!["-".into(), "-".into()],
            Some(Box::new(std::io::Cursor::new("x.jpg\n"))),
        )
        .collect();
        assert_eq!(entries.len(), 2);
        assert!(entries[1].problem.is_some());
    }
}
