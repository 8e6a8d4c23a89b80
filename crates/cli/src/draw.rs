//! `detect --draw DIR`: each input written again with its boxes and labels drawn, a picture a
//! person looks at. Boxes are outlined in a colour per class, two or more pixels thick (a
//! 300th of the shorter side), and labelled `car 0.70` in white on the box's colour, above
//! the box (inside it when there is no room above), in DejaVu Sans Mono Bold
//! (assets/fonts, compiled in).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use singlepoint_model::RgbImage;
use singlepoint_runtime::detect::Detection;

const FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSansMono-Bold.ttf");

/// Distinct colours (Paul Tol's bright and vibrant schemes), by class index.
pub const PALETTE: [[u8; 3]; 10] = [
    [0x44, 0x77, 0xaa],
    [0xee, 0x66, 0x77],
    [0x22, 0x88, 0x33],
    [0xcc, 0xbb, 0x44],
    [0x66, 0xcc, 0xee],
    [0xaa, 0x33, 0x77],
    [0xee, 0x77, 0x33],
    [0x00, 0x99, 0x88],
    [0xcc, 0x33, 0x11],
    [0x33, 0x22, 0x88],
];

pub fn colour(class: usize) -> [u8; 3] {
    PALETTE[class % PALETTE.len()]
}

/// Line thickness for an image: a 300th of its shorter side, at least 2 pixels.
pub fn thickness(width: u32, height: u32) -> u32 {
    (width.min(height) / 300).max(2)
}

fn fill(image: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, rgb: [u8; 3]) {
    let (w, h) = (i64::from(image.width), i64::from(image.height));
    let (x0, x1) = (x0.clamp(0, w), x1.clamp(0, w));
    let (y0, y1) = (y0.clamp(0, h), y1.clamp(0, h));
    for y in y0..y1 {
        let row = (y * w) as usize * 3;
        for x in x0..x1 {
            let at = row + x as usize * 3;
            image.pixels[at..at + 3].copy_from_slice(&rgb);
        }
    }
}

/// Draws `detections` on `image` in place.
pub fn draw(image: &mut RgbImage, detections: &[Detection]) {
    let font = FontRef::try_from_slice(FONT).expect("the bundled font parses");
    let t = i64::from(thickness(image.width, image.height));
    let size = (image.width.min(image.height) as f32 / 36.0).clamp(12.0, 48.0);
    let scaled = font.as_scaled(PxScale::from(size));
    // Lowest score first, so the strongest boxes end up on top.
    let mut order: Vec<&Detection> = detections.iter().collect();
    order.sort_by(|a, b| a.score.total_cmp(&b.score));
    for d in order {
        let rgb = colour(d.class);
        let [x1, y1, x2, y2] = d.bbox.map(|v| v.round() as i64);
        fill(image, x1, y1, x2, y1 + t, rgb);
        fill(image, x1, y2 - t, x2, y2, rgb);
        fill(image, x1, y1, x1 + t, y2, rgb);
        fill(image, x2 - t, y1, x2, y2, rgb);
        let name = d.label.clone().unwrap_or_else(|| d.class.to_string());
        let text = format!("{name} {:.2}", d.score);
        let advance: f32 = text
            .chars()
            .map(|c| scaled.h_advance(font.glyph_id(c)))
            .sum();
        let (tw, th) = (advance.ceil() as i64 + 6, scaled.height().ceil() as i64 + 2);
        // Above the box when it fits, else just inside its top edge; moved left to stay in
        // the picture.
        let top = if y1 - th >= 0 { y1 - th } else { y1 };
        let left = x1.min(i64::from(image.width) - tw).max(0);
        fill(image, left, top, left + tw, top + th, rgb);
        let mut pen = left as f32 + 3.0;
        let baseline = top as f32 + 1.0 + scaled.ascent();
        for c in text.chars() {
            let id = font.glyph_id(c);
            let glyph = id.with_scale_and_position(scaled.scale(), ab_glyph::point(pen, baseline));
            pen += scaled.h_advance(id);
            let Some(outline) = font.outline_glyph(glyph) else {
                continue;
            };
            let bounds = outline.px_bounds();
            let (w, h) = (i64::from(image.width), i64::from(image.height));
            outline.draw(|gx, gy, coverage| {
                let x = bounds.min.x as i64 + i64::from(gx);
                let y = bounds.min.y as i64 + i64::from(gy);
                if (0..w).contains(&x) && (0..h).contains(&y) {
                    let at = (y * w + x) as usize * 3;
                    for (k, &base) in rgb.iter().enumerate() {
                        let v = f32::from(base) + (255.0 - f32::from(base)) * coverage;
                        image.pixels[at + k] = v.round().clamp(0.0, 255.0) as u8;
                    }
                }
            });
        }
    }
}

/// Where drawn pictures go: `DIR/<file name>.png` (PNG keeps every pixel), and when two inputs
/// share a file name, the later ones `DIR/<file name>-<index>.png`.
pub struct Drawer {
    dir: PathBuf,
    used: HashSet<PathBuf>,
}

impl Drawer {
    pub fn new(dir: &Path) -> anyhow::Result<Drawer> {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!("cannot create `--draw` folder `{}`: {e}", dir.display())
        })?;
        Ok(Drawer {
            dir: dir.to_path_buf(),
            used: HashSet::new(),
        })
    }

    /// The path a drawing of `input` (the `idx`-th input) goes to.
    pub fn target(&mut self, input: &Path, idx: usize, ext: &str) -> PathBuf {
        let stem = input
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("input-{idx}"));
        let mut path = self.dir.join(format!("{stem}.{ext}"));
        if !self.used.insert(path.clone()) {
            path = self.dir.join(format!("{stem}-{idx}.{ext}"));
            self.used.insert(path.clone());
        }
        path
    }

    /// Decodes the image at `input` again (upright, full size: the boxes' pixels), draws, and
    /// writes it; the path written.
    pub fn image(
        &mut self,
        input: &Path,
        idx: usize,
        detections: &[Detection],
        limits: &singlepoint_model::DecodeLimits,
    ) -> Result<PathBuf, String> {
        let bytes = std::fs::read(input).map_err(|e| e.to_string())?;
        let (mut image, _) =
            singlepoint_model::decode_rgb(&bytes, limits, None).map_err(|e| e.to_string())?;
        draw(&mut image, detections);
        let target = self.target(input, idx, "png");
        save_png(&image, &target)?;
        Ok(target)
    }
}

/// An annotated copy of one video being written: the video decoded a second time alongside
/// the results (they come in frame order), each result's frame drawn and piped to an ffmpeg
/// encoder (H.264 in MP4).
pub struct VideoDrawing {
    pub input: PathBuf,
    pub idx: usize,
    pub target: PathBuf,
    frames: singlepoint_runtime::video::FrameReader,
    encoder: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
}

impl VideoDrawing {
    pub fn start(
        input: &Path,
        idx: usize,
        target: PathBuf,
        fps: Option<f64>,
        max_pixels: u64,
    ) -> Result<VideoDrawing, String> {
        use singlepoint_runtime::video::{FrameReader, VideoOptions};
        let frames = FrameReader::open(
            input,
            VideoOptions {
                fps: None,
                max_pixels,
                stall: VideoOptions::DEFAULT_STALL,
            },
        )
        .map_err(|e| e.to_string())?;
        let info = frames.info().clone();
        let rate = fps.or(info.fps).unwrap_or(25.0);
        let mut encoder = std::process::Command::new("ffmpeg")
            .args([
                "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
            ])
            .args(["-s", &format!("{}x{}", info.width, info.height)])
            .args(["-r", &format!("{rate}"), "-i", "pipe:0"])
            .args([
                "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
            ])
            // yuv420p needs even sides.
            .args(["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"])
            .arg(&target)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start ffmpeg to encode: {e}"))?;
        let stdin = encoder.stdin.take();
        Ok(VideoDrawing {
            input: input.to_path_buf(),
            idx,
            target,
            frames,
            encoder,
            stdin,
        })
    }

    /// Draws `detections` on frame `index` and encodes it.
    pub fn frame(&mut self, index: u64, detections: &[Detection]) -> Result<(), String> {
        use std::io::Write;
        loop {
            match self.frames.next() {
                Some(Ok(frame)) if frame.index < index => continue,
                Some(Ok(mut frame)) if frame.index == index => {
                    draw(&mut frame.image, detections);
                    let stdin = self.stdin.as_mut().ok_or("the encoder is closed")?;
                    return stdin
                        .write_all(&frame.image.pixels)
                        .map_err(|e| format!("the encoder stopped: {e}"));
                }
                Some(Ok(_)) | None => return Err(format!("frame {index} not found again")),
                Some(Err(e)) => return Err(e.to_string()),
            }
        }
    }

    /// Closes the encoder and waits for it; the path written.
    pub fn finish(mut self) -> Result<PathBuf, String> {
        self.stdin = None;
        let out = self
            .encoder
            .wait_with_output()
            .map_err(|e| format!("ffmpeg: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ffmpeg could not write `{}`: {}",
                self.target.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(self.target)
    }
}

pub fn save_png(image: &RgbImage, path: &Path) -> Result<(), String> {
    image::save_buffer(
        path,
        &image.pixels,
        image.width,
        image.height,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| format!("cannot write `{}`: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_are_drawn_where_the_detections_are_and_nowhere_else() {
        let grey = 90u8;
        let (w, h) = (400u32, 300u32);
        let mut image = RgbImage {
            width: w,
            height: h,
            pixels: vec![grey; (w * h * 3) as usize],
        };
        let car = Detection {
            class: 2,
            label: Some("car".into()),
            score: 0.7,
            bbox: [100.0, 120.0, 250.0, 220.0],
        };
        draw(&mut image, std::slice::from_ref(&car));
        let at = |x: u32, y: u32| {
            let i = ((y * w + x) * 3) as usize;
            [image.pixels[i], image.pixels[i + 1], image.pixels[i + 2]]
        };
        let rgb = colour(2);
        // All four edges, a thickness deep.
        for (x, y) in [
            (100, 170),
            (101, 170),
            (249, 170),
            (175, 120),
            (175, 219),
            (100, 219),
        ] {
            assert_eq!(at(x, y), rgb, "edge pixel ({x}, {y})");
        }
        // Inside and outside the box, the picture is untouched.
        for (x, y) in [
            (175, 170),
            (103, 170),
            (50, 50),
            (399, 299),
            (300, 170),
            (175, 240),
        ] {
            assert_eq!(at(x, y), [grey; 3], "({x}, {y})");
        }
        // The label sits on the box's colour just above it, with white glyph pixels.
        let label: Vec<[u8; 3]> = (100..160)
            .flat_map(|x| (106..120).map(move |y| (x, y)))
            .map(|(x, y)| at(x, y))
            .collect();
        let bare: Vec<(u32, u32)> = (100..150)
            .flat_map(|x| (106..120).map(move |y| (x, y)))
            .filter(|&(x, y)| at(x, y) == [grey; 3])
            .collect();
        assert!(bare.is_empty(), "the label background leaves {bare:?} bare");
        assert!(label.contains(&[255; 3]), "glyphs are drawn in white");
    }

    #[test]
    fn a_box_at_the_top_edge_gets_its_label_inside_and_nothing_is_drawn_out_of_bounds() {
        let mut image = RgbImage {
            width: 50,
            height: 40,
            pixels: vec![0; 50 * 40 * 3],
        };
        let d = Detection {
            class: 0,
            label: None,
            score: 0.5,
            bbox: [-10.0, 0.0, 60.0, 45.0],
        };
        draw(&mut image, &[d]);
        assert_eq!(image.pixels.len(), 50 * 40 * 3);
        assert_eq!(&image.pixels[..3], &colour(0));
    }

    #[test]
    fn inputs_with_the_same_name_get_their_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut drawer = Drawer::new(&dir.path().join("out")).unwrap();
        let a = drawer.target(Path::new("a/photo.jpg"), 0, "png");
        let b = drawer.target(Path::new("b/photo.jpg"), 1, "png");
        assert_eq!(a.file_name().unwrap(), "photo.png");
        assert_eq!(b.file_name().unwrap(), "photo-1.png");
    }
}
