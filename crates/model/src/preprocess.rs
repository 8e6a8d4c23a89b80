//! A decoded RGB8 image → one item of the model's input tensor, as [`Preprocess`] says:
//! colour conversion, resize, centre crop, `(pixel · scale − mean) / std`, NCHW or NHWC.
//!
//! The resize reproduces Pillow's `Image.resize` (a separable convolution whose support grows
//! with the shrink factor, i.e. antialiased), using `fast_image_resize`, which implements the
//! same algorithm with SIMD. The centre crop is folded into the resize: only the source region
//! that lands inside the crop is resampled, with the same sampling positions a full resize
//! followed by a crop would use. That is cheaper, and an extreme aspect ratio (1 × 100 000)
//! cannot ask for a gigantic intermediate image.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::decode::RgbImage;
use crate::manifest::{
    ColorOrder, Crop, CropRounding, Layout, Preprocess, ResizeFilter, ResizePolicy,
};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PreprocessError {
    #[error("output buffer holds {got} values, one item needs {need}")]
    OutputSize { got: usize, need: usize },
    #[error("image buffer holds {got} bytes, a {width}×{height} RGB image needs {need}")]
    InputSize {
        width: u32,
        height: u32,
        got: usize,
        need: usize,
    },
    #[error("resize failed: {0}")]
    Resize(String),
}

/// Owns the per-worker state of preprocessing: the resizer's scratch buffers, the
/// normalisation tables and the intermediate image. One per worker thread.
pub struct Preprocessor {
    config: Preprocess,
    resizer: Resizer,
    /// `lut[c][v]` = normalised value of byte `v` in output channel `c`.
    lut: Vec<[f32; 256]>,
    resized: Vec<u8>,
    gray: Vec<u8>,
    /// The letterbox's scaled image before it is placed on the canvas.
    scaled: Vec<u8>,
}

impl Preprocessor {
    pub fn new(config: &Preprocess) -> Preprocessor {
        let lut = (0..config.color.channels())
            .map(|c| {
                let mut table = [0f32; 256];
                for (v, slot) in table.iter_mut().enumerate() {
                    *slot = (v as f32 * config.scale - config.mean[c]) / config.std[c];
                }
                table
            })
            .collect();
        Preprocessor {
            config: config.clone(),
            resizer: Resizer::new(),
            lut,
            resized: Vec::new(),
            gray: Vec::new(),
            scaled: Vec::new(),
        }
    }

    pub fn config(&self) -> &Preprocess {
        &self.config
    }

    /// Number of `f32` values one item occupies.
    pub fn item_len(&self) -> usize {
        self.config.item_shape().iter().product()
    }

    /// Writes the preprocessed `image` into `out` (exactly [`Self::item_len`] values).
    pub fn run(&mut self, image: &RgbImage, out: &mut [f32]) -> Result<(), PreprocessError> {
        let need = self.item_len();
        if out.len() != need {
            return Err(PreprocessError::OutputSize {
                got: out.len(),
                need,
            });
        }
        let rgb_len = image.width as usize * image.height as usize * 3;
        if image.pixels.len() < rgb_len {
            return Err(PreprocessError::InputSize {
                width: image.width,
                height: image.height,
                got: image.pixels.len(),
                need: rgb_len,
            });
        }
        let (source, pixel_type, channels) = match self.config.color {
            ColorOrder::Gray => {
                to_gray_like_pillow(&image.pixels[..rgb_len], &mut self.gray);
                (&self.gray[..], PixelType::U8, 1)
            }
            ColorOrder::Rgb | ColorOrder::Bgr => (&image.pixels[..rgb_len], PixelType::U8x3, 3),
        };
        let (out_h, out_w) = self.config.output_size();
        if let Some(lb) = self.config.resize.letterbox(image.width, image.height) {
            // The source may borrow the grey buffer: hand it over, and take it back after.
            let owned = std::mem::take(&mut self.gray);
            let source = if self.config.color == ColorOrder::Gray {
                &owned[..]
            } else {
                &image.pixels[..rgb_len]
            };
            let done = self.letterbox(image, source, pixel_type, channels, lb, out);
            self.gray = owned;
            return done;
        }
        let crop = source_crop(
            self.config.resize,
            self.config.crop,
            image.width,
            image.height,
        );
        let src = ImageRef::new(image.width, image.height, source, pixel_type)
            .map_err(|e| PreprocessError::Resize(e.to_string()))?;
        self.resized.clear();
        self.resized
            .resize(out_w as usize * out_h as usize * channels, 0);
        let mut dst = Image::from_slice_u8(out_w, out_h, &mut self.resized, pixel_type)
            .map_err(|e| PreprocessError::Resize(e.to_string()))?;
        let options = ResizeOptions::new()
            .resize_alg(resize_alg(self.config.resize.filter()))
            .crop(crop.left, crop.top, crop.width, crop.height);
        self.resizer
            .resize(&src, &mut dst, &options)
            .map_err(|e| PreprocessError::Resize(e.to_string()))?;
        self.normalise_resized(channels, out);
        Ok(())
    }
}

impl Preprocessor {
    /// `self.resized` (the model's input size, as bytes) → normalised values in `out`.
    fn normalise_resized(&self, channels: usize, out: &mut [f32]) {
        normalise(
            &self.resized,
            channels,
            self.config.color == ColorOrder::Bgr,
            self.config.layout,
            &self.lut,
            out,
        );
    }

    /// The letterbox: the whole image resized to `lb`'s size, centred on a canvas of the
    /// policy's grey, then normalised.
    fn letterbox(
        &mut self,
        image: &RgbImage,
        source: &[u8],
        pixel_type: PixelType,
        channels: usize,
        lb: crate::manifest::Letterbox,
        out: &mut [f32],
    ) -> Result<(), PreprocessError> {
        let ResizePolicy::Letterbox {
            width: cw,
            height: ch,
            filter,
            pad,
        } = self.config.resize
        else {
            unreachable!("letterbox() is called for letterbox policies");
        };
        let src = ImageRef::new(image.width, image.height, source, pixel_type)
            .map_err(|e| PreprocessError::Resize(e.to_string()))?;
        let row = lb.width as usize * channels;
        let mut scaled = std::mem::take(&mut self.scaled);
        scaled.clear();
        scaled.resize(row * lb.height as usize, 0);
        let mut dst = Image::from_slice_u8(lb.width, lb.height, &mut scaled, pixel_type)
            .map_err(|e| PreprocessError::Resize(e.to_string()))?;
        let options = ResizeOptions::new().resize_alg(resize_alg(filter));
        self.resizer
            .resize(&src, &mut dst, &options)
            .map_err(|e| PreprocessError::Resize(e.to_string()))?;
        self.resized.clear();
        self.resized
            .resize(cw as usize * ch as usize * channels, pad);
        let canvas_row = cw as usize * channels;
        for (y, line) in scaled.chunks_exact(row).enumerate() {
            let at = (y + lb.dy as usize) * canvas_row + lb.dx as usize * channels;
            self.resized[at..at + row].copy_from_slice(line);
        }
        self.scaled = scaled;
        self.normalise_resized(channels, out);
        Ok(())
    }
}

/// A region of the source image, in source pixels (fractional).
#[derive(Clone, Copy, Debug, PartialEq)]
struct SourceCrop {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
}

/// The source region that a resize to the policy's size followed by the centre crop keeps.
fn source_crop(resize: ResizePolicy, crop: Option<Crop>, width: u32, height: u32) -> SourceCrop {
    let (target_w, target_h) = resize.target_size(width, height);
    let (crop_h, crop_w, rounding) = match crop {
        Some(c) => (c.height, c.width, c.rounding),
        None => (target_h, target_w, CropRounding::Floor),
    };
    let (crop_h, crop_w) = (crop_h.min(target_h), crop_w.min(target_w));
    let left = f64::from(rounding.offset(target_w, crop_w));
    let top = f64::from(rounding.offset(target_h, crop_h));
    let sx = f64::from(width) / f64::from(target_w);
    let sy = f64::from(height) / f64::from(target_h);
    SourceCrop {
        left: left * sx,
        top: top * sy,
        width: f64::from(crop_w) * sx,
        height: f64::from(crop_h) * sy,
    }
}

fn resize_alg(filter: ResizeFilter) -> ResizeAlg {
    match filter {
        ResizeFilter::Nearest => ResizeAlg::Nearest,
        ResizeFilter::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
        // Pillow's BICUBIC is the a = -0.5 kernel, i.e. Catmull-Rom.
        ResizeFilter::Bicubic => ResizeAlg::Convolution(FilterType::CatmullRom),
        ResizeFilter::Lanczos3 => ResizeAlg::Convolution(FilterType::Lanczos3),
    }
}

/// `PIL.Image.convert("L")`: ITU-R 601-2 luma in 16-bit fixed point, rounded.
fn to_gray_like_pillow(rgb: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend(rgb.chunks_exact(3).map(|p| {
        let l = u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471 + 0x8000;
        (l >> 16) as u8
    }));
}

fn normalise(
    pixels: &[u8],
    channels: usize,
    reverse_channels: bool,
    layout: Layout,
    lut: &[[f32; 256]],
    out: &mut [f32],
) {
    let n_pixels = pixels.len() / channels;
    match layout {
        Layout::Nchw => {
            for c in 0..channels {
                let src_c = if reverse_channels {
                    channels - 1 - c
                } else {
                    c
                };
                let table = &lut[c];
                let plane = &mut out[c * n_pixels..(c + 1) * n_pixels];
                for (dst, px) in plane.iter_mut().zip(pixels.chunks_exact(channels)) {
                    *dst = table[usize::from(px[src_c])];
                }
            }
        }
        Layout::Nhwc => {
            for (dst, px) in out
                .chunks_exact_mut(channels)
                .zip(pixels.chunks_exact(channels))
            {
                for c in 0..channels {
                    let src_c = if reverse_channels {
                        channels - 1 - c
                    } else {
                        c
                    };
                    dst[c] = lut[c][usize::from(px[src_c])];
                }
            }
        }
    }
}

impl Preprocess {
    /// The shorter side a source image needs for the resize to lose nothing: what a JPEG may be
    /// reduced to in the DCT domain before resampling.
    pub fn min_source_short_side(&self) -> u32 {
        match self.resize {
            ResizePolicy::ShorterSide { size, .. } => size,
            ResizePolicy::Exact { width, height, .. }
            | ResizePolicy::Letterbox { width, height, .. } => width.max(height),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(
        color: ColorOrder,
        layout: Layout,
        crop: Option<Crop>,
        resize: ResizePolicy,
    ) -> Preprocess {
        let c = color.channels();
        Preprocess {
            color,
            resize,
            crop,
            scale: 1.0,
            mean: vec![127.0; c],
            std: vec![128.0; c],
            layout,
        }
    }

    fn solid(width: u32, height: u32, rgb: [u8; 3]) -> RgbImage {
        RgbImage {
            width,
            height,
            pixels: rgb.repeat((width * height) as usize),
        }
    }

    fn shorter(size: u32) -> ResizePolicy {
        ResizePolicy::ShorterSide {
            size,
            filter: ResizeFilter::Bilinear,
        }
    }

    fn square(side: u32, rounding: CropRounding) -> Option<Crop> {
        Some(Crop {
            height: side,
            width: side,
            rounding,
        })
    }

    #[test]
    fn crop_offsets_follow_the_declared_rounding() {
        for rounding in [CropRounding::Floor, CropRounding::HalfEven] {
            // 640×427 → 384×256, crop 224: left = 80, top = 16 either way.
            let c = source_crop(shorter(256), square(224, rounding), 640, 427);
            let sx = 640.0 / 384.0;
            assert!((c.left - 80.0 * sx).abs() < 1e-9);
            assert!((c.width - 224.0 * sx).abs() < 1e-9);
            assert!((c.top - 16.0 * 427.0 / 256.0).abs() < 1e-9);
            // 451×300 → 385×256: left = 80.5 → 80 both ways (80 is even).
            let c = source_crop(shorter(256), square(224, rounding), 451, 300);
            assert!((c.left - 80.0 * 451.0 / 385.0).abs() < 1e-9);
        }
        // 741×500 → 379×256: left = 77.5, which PIL scripts floor to 77 and torchvision
        // rounds to the even 78.
        let floor = source_crop(shorter(256), square(224, CropRounding::Floor), 741, 500);
        let even = source_crop(shorter(256), square(224, CropRounding::HalfEven), 741, 500);
        let sx = 741.0 / 379.0;
        assert!((floor.left - 77.0 * sx).abs() < 1e-9, "{floor:?}");
        assert!((even.left - 78.0 * sx).abs() < 1e-9, "{even:?}");
        assert_eq!(CropRounding::HalfEven.offset(229, 224), 2);
        assert_eq!(CropRounding::HalfEven.offset(231, 224), 4);
        assert_eq!(CropRounding::Floor.offset(231, 224), 3);
        assert_eq!(CropRounding::Floor.offset(200, 224), 0);
    }

    #[test]
    fn layouts_and_channel_orders_place_values_where_the_model_expects() {
        let image = solid(10, 6, [255, 127, 0]);
        let exact = ResizePolicy::Exact {
            width: 4,
            height: 2,
            filter: ResizeFilter::Bilinear,
        };
        let cases: &[(ColorOrder, Layout, &[f32])] = &[
            (ColorOrder::Rgb, Layout::Nchw, &[1.0, 0.0, -127.0 / 128.0]),
            (ColorOrder::Bgr, Layout::Nchw, &[-127.0 / 128.0, 0.0, 1.0]),
            (ColorOrder::Rgb, Layout::Nhwc, &[1.0, 0.0, -127.0 / 128.0]),
        ];
        for &(color, layout, per_channel) in cases {
            let mut p = Preprocessor::new(&config(color, layout, None, exact));
            let mut out = vec![0.0; p.item_len()];
            p.run(&image, &mut out).unwrap();
            for c in 0..3 {
                let value = match layout {
                    Layout::Nchw => out[c * 8 + 5],
                    Layout::Nhwc => out[5 * 3 + c],
                };
                assert_eq!(value, per_channel[c], "{color:?} {layout:?} channel {c}");
            }
        }
    }

    #[test]
    fn gray_follows_pillows_luma() {
        let exact = ResizePolicy::Exact {
            width: 2,
            height: 2,
            filter: ResizeFilter::Bilinear,
        };
        let mut cfg = config(ColorOrder::Gray, Layout::Nchw, None, exact);
        cfg.mean = vec![0.0];
        cfg.std = vec![1.0];
        let mut p = Preprocessor::new(&cfg);
        let mut out = vec![0.0; 4];
        p.run(&solid(4, 4, [255, 0, 0]), &mut out).unwrap();
        assert_eq!(out, vec![76.0; 4]); // PIL: Image.new("RGB", (4, 4), (255, 0, 0)).convert("L") → 76
    }

    #[test]
    fn wrong_buffer_sizes_are_errors_not_panics() {
        let mut p = Preprocessor::new(&config(
            ColorOrder::Rgb,
            Layout::Nchw,
            square(4, CropRounding::HalfEven),
            shorter(8),
        ));
        let mut short = vec![0.0; 3];
        assert!(p.run(&solid(8, 8, [0; 3]), &mut short).is_err());
        let mut out = vec![0.0; p.item_len()];
        let broken = RgbImage {
            width: 8,
            height: 8,
            pixels: vec![0; 10],
        };
        assert!(p.run(&broken, &mut out).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any image size, however extreme its aspect ratio, yields exactly one item of finite
        /// values within the range the normalisation allows.
        #[test]
        fn any_size_gives_a_full_finite_item(w in 1u32..600, h in 1u32..600, v in any::<u8>()) {
            let mut p = Preprocessor::new(&config(ColorOrder::Rgb, Layout::Nchw, square(16, CropRounding::Floor), shorter(20)));
            let mut out = vec![f32::NAN; p.item_len()];
            p.run(&solid(w, h, [v, v, v]), &mut out).unwrap();
            let expected = (f32::from(v) - 127.0) / 128.0;
            for x in out {
                prop_assert!((x - expected).abs() <= 1.0 / 128.0 + 1e-6, "{} vs {}", x, expected);
            }
        }

        /// Whatever the image's size, the region resampled lies inside it.
        #[test]
        fn crop_region_stays_inside_the_source(w in 1u32..5000, h in 1u32..5000) {
            let c = source_crop(shorter(256), square(224, CropRounding::HalfEven), w, h);
            prop_assert!(c.left >= 0.0 && c.top >= 0.0);
            prop_assert!(c.left + c.width <= f64::from(w) + 1e-6);
            prop_assert!(c.top + c.height <= f64::from(h) + 1e-6);
        }
    }
}
