//! Video files → frames, through the `ffmpeg` program (Debian's `ffmpeg` package), run as a
//! subprocess.
//!
//! Why a subprocess and not the libav* libraries: the decoders are the part of a media stack
//! with the most bugs on hostile input, and in a child process a crash in one of them is one
//! failed video, never a dead server or a lost run (a hang is one too: a watchdog kills a child
//! that keeps its reader waiting past the stall limit); the build stays free of C headers
//! and of one FFmpeg version's ABI; and every codec and container the user's ffmpeg has works.
//! What it costs is one copy of each frame through a pipe (a 768×576 RGB frame is 1.3 MB,
//! well under a millisecond), and the child's CPU time is counted into the decode stage.
//!
//! The child writes raw RGB24 frames to its stdout, unscaled, one after another, in decode
//! order (`-fps_mode passthrough`: no frame is duplicated or dropped), and its `showinfo`
//! filter logs each frame's presentation time to stderr, which a thread reads: every frame
//! carries its own timestamp, right for variable frame rates too. Sampling (`--fps N`) keeps
//! the first frame at or after each 1/N s step, so indices and timestamps stay the video's.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};
use singlepoint_model::RgbImage;

use crate::cputime::children_cpu_time;

/// What went wrong with a video as a whole.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VideoError {
    #[error(
        "video input needs the `ffmpeg` and `ffprobe` programs on PATH (Debian: `apt-get install ffmpeg`): {0}"
    )]
    FfmpegMissing(String),
    #[error("not a video ffmpeg can read: {0}")]
    NotAVideo(String),
    #[error("the file has no video stream")]
    NoVideoStream,
    #[error("the video has no frames{0}")]
    NoFrames(String),
    #[error("the video's frames are {width}×{height}, more pixels than the limit ({max_pixels})")]
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    #[error("the video is truncated or damaged: {decoded} of {declared} frames decoded{detail}")]
    Truncated {
        decoded: u64,
        declared: u64,
        detail: String,
    },
    #[error("decoding stopped after {decoded} frames: {detail}")]
    Decode { decoded: u64, detail: String },
}

/// What `ffprobe` says of a file's first video stream.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoInfo {
    pub width: u32,
    pub height: u32,
    /// Frames per second (the stream's average), when it declares one.
    pub fps: Option<f64>,
    /// The frame count the container declares, when it does.
    pub frames: Option<u64>,
    pub codec: String,
}

/// One decoded frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Its position among the video's decoded frames, from 0.
    pub index: u64,
    /// Its presentation time, seconds from the start.
    pub time: f64,
    pub image: RgbImage,
}

/// How frames are taken from a video.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VideoOptions {
    /// Keep about this many frames per second (the first frame at or after each step);
    /// `None` keeps every frame.
    pub fps: Option<f64>,
    pub max_pixels: u64,
    /// How long ffmpeg may keep a reader waiting for the next frame before it is taken for
    /// hung, killed, and the video failed (time spent waiting on the model does not count).
    pub stall: Duration,
}

impl VideoOptions {
    pub const DEFAULT_STALL: Duration = Duration::from_secs(60);
}

/// Kills a child that keeps its reader waiting longer than the stall limit.
struct Watchdog {
    /// Milliseconds since `epoch` when the reader began to wait, 0 when it is not waiting.
    waiting_since: Arc<AtomicU64>,
    stalled: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
}

impl Watchdog {
    fn start(pid: u32, stall: Duration) -> Watchdog {
        let waiting_since = Arc::new(AtomicU64::new(0));
        let stalled = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        let (w, st, sp) = (waiting_since.clone(), stalled.clone(), stop.clone());
        let tick = stall
            .min(Duration::from_millis(500))
            .max(Duration::from_millis(10));
        std::thread::spawn(move || {
            while !sp.load(Ordering::Acquire) {
                std::thread::sleep(tick);
                let since = w.load(Ordering::Acquire);
                let now = epoch.elapsed().as_millis() as u64;
                if since != 0 && now.saturating_sub(since) > stall.as_millis() as u64 {
                    st.store(true, Ordering::Release);
                    // SAFETY: kill(2) on our own child's pid; it has not been reaped (the
                    // reader waits for it only after this thread is told to stop).
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    return;
                }
            }
        });
        Watchdog {
            waiting_since,
            stalled,
            stop,
            epoch,
        }
    }

    fn waiting(&self, yes: bool) {
        let v = if yes {
            (self.epoch.elapsed().as_millis() as u64).max(1)
        } else {
            0
        };
        self.waiting_since.store(v, Ordering::Release);
    }
}

fn tool_error(tool: &str, e: std::io::Error) -> VideoError {
    if e.kind() == std::io::ErrorKind::NotFound {
        VideoError::FfmpegMissing(format!("`{tool}` not found"))
    } else {
        VideoError::FfmpegMissing(format!("cannot start `{tool}`: {e}"))
    }
}

/// The last two meaningful lines ffmpeg wrote, cleaned of their `[demuxer @ 0x…]` prefix and
/// the file's path (the caller names the file).
fn last_message(stderr: &str, path: &Path) -> String {
    let shown = path.display().to_string();
    let lines: Vec<String> = stderr
        .lines()
        .map(str::trim)
        .map(|mut l| {
            // `[mov,mp4 @ 0x55…] [error] …`: the context and the level go.
            while l.starts_with('[') {
                match l.find("] ") {
                    Some(at) => l = l[at + 2..].trim_start(),
                    None => break,
                }
            }
            l.replace(&format!("{shown}: "), "")
                .replace(&shown, "the file")
        })
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("Last message repeated")
                && !l.contains("misdetection possible")
        })
        .collect();
    match lines.len() {
        0 => "no message".into(),
        n => lines[n.saturating_sub(2)..].join("; "),
    }
}

fn parse_rate(rate: &str) -> Option<f64> {
    let (n, d) = rate.split_once('/').unwrap_or((rate, "1"));
    let (n, d): (f64, f64) = (n.trim().parse().ok()?, d.trim().parse().ok()?);
    (d > 0.0 && n > 0.0 && (n / d).is_finite()).then(|| n / d)
}

/// Reads a video's first video stream's size, rate and declared frame count.
pub fn probe(path: &Path) -> Result<VideoInfo, VideoError> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .arg("stream=codec_name,width,height,avg_frame_rate,r_frame_rate,nb_frames")
        .args(["-of", "json"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| tool_error("ffprobe", e))?;
    if !out.status.success() {
        return Err(VideoError::NotAVideo(last_message(
            &String::from_utf8_lossy(&out.stderr),
            path,
        )));
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| VideoError::NotAVideo(format!("ffprobe's answer is not JSON: {e}")))?;
    let Some(stream) = json["streams"].get(0) else {
        return Err(VideoError::NoVideoStream);
    };
    let dim = |k: &str| stream[k].as_u64().and_then(|v| u32::try_from(v).ok());
    let (Some(width), Some(height)) = (dim("width"), dim("height")) else {
        return Err(VideoError::NoVideoStream);
    };
    let fps = ["avg_frame_rate", "r_frame_rate"]
        .iter()
        .find_map(|k| stream[k].as_str().and_then(parse_rate));
    Ok(VideoInfo {
        width,
        height,
        fps,
        frames: stream["nb_frames"].as_str().and_then(|s| s.parse().ok()),
        codec: stream["codec_name"].as_str().unwrap_or("?").to_string(),
    })
}

/// One `showinfo` line's frame number, presentation time and size.
#[derive(Clone, Copy, Debug, PartialEq)]
struct FrameLog {
    pts_time: Option<f64>,
    size: Option<(u32, u32)>,
}

fn parse_showinfo(line: &str) -> Option<FrameLog> {
    if !line.contains("Parsed_showinfo") || !line.contains(" n:") {
        return None;
    }
    let field = |name: &str| {
        let at = line.find(name)? + name.len();
        line[at..].split_whitespace().next()
    };
    let pts_time = field("pts_time:").and_then(|v| v.parse::<f64>().ok());
    let size = field(" s:").and_then(|v| {
        let (w, h) = v.split_once('x')?;
        Some((w.parse().ok()?, h.parse().ok()?))
    });
    Some(FrameLog {
        pts_time: pts_time.filter(|t| t.is_finite()),
        size,
    })
}

/// The frames of one video, decoded by an ffmpeg child, in order. Yields `Err` once (and
/// then nothing) when decoding fails or the video turns out truncated, after every frame
/// decoded before the failure.
pub struct FrameReader {
    path: PathBuf,
    info: VideoInfo,
    options: VideoOptions,
    child: Option<Child>,
    stdout: Option<ChildStdout>,
    logs: Receiver<FrameLog>,
    stderr_tail: Arc<Mutex<String>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
    watchdog: Watchdog,
    size: Option<(u32, u32)>,
    decoded: u64,
    kept: u64,
    next_time: f64,
    done: bool,
    child_cpu: Duration,
}

impl FrameReader {
    /// Probes `path` and starts decoding it.
    pub fn open(path: &Path, options: VideoOptions) -> Result<FrameReader, VideoError> {
        let info = probe(path)?;
        if u64::from(info.width) * u64::from(info.height) > options.max_pixels {
            return Err(VideoError::TooLarge {
                width: info.width,
                height: info.height,
                max_pixels: options.max_pixels,
            });
        }
        let mut child = Command::new("ffmpeg")
            .args([
                "-nostdin",
                "-nostats",
                "-hide_banner",
                "-loglevel",
                "level+info",
                "-i",
            ])
            .arg(path)
            .args(["-map", "0:v:0", "-an", "-sn", "-dn", "-vf", "showinfo"])
            .args([
                "-fps_mode",
                "passthrough",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "rgb24",
            ])
            .arg("pipe:1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| tool_error("ffmpeg", e))?;
        let watchdog = Watchdog::start(child.id(), options.stall);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let (tx, logs) = unbounded();
        let stderr_tail = Arc::new(Mutex::new(String::new()));
        let tail = stderr_tail.clone();
        let stderr_thread = stderr.map(|stderr| {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(log) = parse_showinfo(&line) {
                        let _ = tx.send(log);
                    } else if ["[warning]", "[error]", "[fatal]", "[panic]"]
                        .iter()
                        .any(|level| line.contains(level))
                    {
                        let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                        // Keep the last few kilobytes: the end says what went wrong.
                        if tail.len() > 8192 {
                            let cut = tail.len() - 4096;
                            let cut = (cut..tail.len())
                                .find(|&i| tail.is_char_boundary(i))
                                .unwrap_or(tail.len());
                            tail.drain(..cut);
                        }
                        tail.push_str(&line);
                        tail.push('\n');
                    }
                }
            })
        });
        Ok(FrameReader {
            path: path.to_path_buf(),
            info,
            options,
            child: Some(child),
            stdout,
            logs,
            stderr_tail,
            stderr_thread,
            watchdog,
            size: None,
            decoded: 0,
            kept: 0,
            next_time: 0.0,
            done: false,
            child_cpu: Duration::ZERO,
        })
    }

    pub fn info(&self) -> &VideoInfo {
        &self.info
    }

    /// CPU time the ffmpeg child used, known once it has exited (after the last frame).
    pub fn child_cpu(&self) -> Duration {
        self.child_cpu
    }

    /// Frames decoded so far (kept or not).
    pub fn decoded(&self) -> u64 {
        self.decoded
    }

    /// Waits for the child and the stderr thread; the error to report, if any.
    fn finish(&mut self) -> Option<VideoError> {
        self.done = true;
        self.stdout = None;
        self.watchdog.stop.store(true, Ordering::Release);
        let before = children_cpu_time();
        let status = self.child.take().and_then(|mut c| c.wait().ok());
        self.child_cpu = children_cpu_time().saturating_sub(before);
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        let tail = self
            .stderr_tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let message = last_message(&tail, &self.path);
        if self.watchdog.stalled.load(Ordering::Acquire) {
            return Some(VideoError::Decode {
                decoded: self.decoded,
                detail: format!(
                    "ffmpeg delivered no frame for {} s and was stopped",
                    self.options.stall.as_secs_f64()
                ),
            });
        }
        // The probe found a video stream: nothing decoded from it means it has no frames.
        if self.decoded == 0 {
            let ok = status.is_some_and(|s| s.success());
            return Some(VideoError::NoFrames(if ok {
                String::new()
            } else {
                format!(" (ffmpeg: {message})")
            }));
        }
        if !status.is_some_and(|s| s.success()) {
            return Some(VideoError::Decode {
                decoded: self.decoded,
                detail: message,
            });
        }
        // A container that declares its frame count and delivers fewer was cut short (ffmpeg
        // decodes what is there and exits 0).
        match self.info.frames {
            Some(declared) if declared > self.decoded + 1 => Some(VideoError::Truncated {
                decoded: self.decoded,
                declared,
                detail: if tail.trim().is_empty() {
                    String::new()
                } else {
                    format!(" ({message})")
                },
            }),
            _ => None,
        }
    }

    fn read_frame(&mut self) -> Option<Result<Frame, VideoError>> {
        self.watchdog.waiting(true);
        let frame = self.read_frame_waiting();
        self.watchdog.waiting(false);
        frame
    }

    fn read_frame_waiting(&mut self) -> Option<Result<Frame, VideoError>> {
        let stdout = self.stdout.as_mut()?;
        // The frame's log line comes before its pixels; without one (ffmpeg gone) the
        // stream's rate gives the time and the probe the size.
        let log = self.logs.recv_timeout(self.options.stall).ok();
        let (width, height) = *self.size.get_or_insert_with(|| {
            log.and_then(|l| l.size)
                .unwrap_or((self.info.width, self.info.height))
        });
        if u64::from(width) * u64::from(height) > self.options.max_pixels {
            return Some(Err(VideoError::TooLarge {
                width,
                height,
                max_pixels: self.options.max_pixels,
            }));
        }
        let mut pixels = vec![0u8; width as usize * height as usize * 3];
        let mut filled = 0;
        while filled < pixels.len() {
            match stdout.read(&mut pixels[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Some(Err(VideoError::Decode {
                        decoded: self.decoded,
                        detail: e.to_string(),
                    }))
                }
            }
        }
        if filled < pixels.len() {
            // The end (a partial frame is what a killed child leaves; it is not a frame).
            return None;
        }
        let index = self.decoded;
        self.decoded += 1;
        let time = log
            .and_then(|l| l.pts_time)
            .or_else(|| self.info.fps.map(|fps| index as f64 / fps))
            .unwrap_or(0.0);
        Some(Ok(Frame {
            index,
            time,
            image: RgbImage {
                width,
                height,
                pixels,
            },
        }))
    }
}

impl Iterator for FrameReader {
    type Item = Result<Frame, VideoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            match self.read_frame() {
                Some(Ok(frame)) => {
                    let keep = match self.options.fps {
                        None => true,
                        Some(fps) => {
                            let first = self.kept == 0;
                            if first || frame.time + 1e-6 >= self.next_time {
                                let step = 1.0 / fps;
                                let base = if first { frame.time } else { self.next_time };
                                // Steps missed by a gap in the video are skipped, not queued.
                                let mut next = base + step;
                                while next <= frame.time + 1e-6 {
                                    next += step;
                                }
                                self.next_time = next;
                                true
                            } else {
                                false
                            }
                        }
                    };
                    if keep {
                        self.kept += 1;
                        return Some(Ok(frame));
                    }
                }
                Some(Err(e)) => {
                    self.finish();
                    return Some(Err(e));
                }
                None => return self.finish().map(Err),
            }
        }
    }
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        self.watchdog.stop.store(true, Ordering::Release);
        self.stdout = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn showinfo_lines_give_time_and_size() {
        let line = "[Parsed_showinfo_0 @ 0x55eb] n:  12 pts:   6144 pts_time:0.48    pos:  48 \
                    fmt:yuv420p sar:1/1 s:640x272 i:P iskey:0 type:P checksum:3D582DC4";
        assert_eq!(
            parse_showinfo(line),
            Some(FrameLog {
                pts_time: Some(0.48),
                size: Some((640, 272))
            })
        );
        let nopts = "[Parsed_showinfo_0 @ 0x1] n:   0 pts:NOPTS pts_time:NOPTS s:8x8 i:P";
        assert_eq!(parse_showinfo(nopts).unwrap().pts_time, None);
        assert_eq!(
            parse_showinfo("[Parsed_showinfo_0 @ 0x1] config in time_base: 1/12800"),
            None
        );
        assert_eq!(parse_showinfo("frame=  250 fps=0.0 q=-0.0"), None);
    }

    #[test]
    fn rates_parse_as_ffprobe_writes_them() {
        assert_eq!(parse_rate("25/1"), Some(25.0));
        assert_eq!(
            parse_rate("30000/1001").map(|r| (r * 1000.0).round()),
            Some(29970.0)
        );
        assert_eq!(parse_rate("0/0"), None);
        assert_eq!(parse_rate("10"), Some(10.0));
    }

    #[test]
    fn messages_lose_ffmpegs_prefix_and_the_path() {
        let path = Path::new("/tmp/x.mp4");
        assert_eq!(
            last_message(
                "[mov,mp4 @ 0x55] [error] moov atom not found\n[error] /tmp/x.mp4: Invalid data found when processing input\n",
                path
            ),
            "moov atom not found; Invalid data found when processing input"
        );
    }
}
