//! Image bytes → an upright 8-bit RGB image.
//!
//! The format is taken from the content, never the file name. Every format the `image` crate
//! reads here (JPEG, PNG, WebP, GIF's first frame, BMP, TIFF) is accepted; grayscale, alpha,
//! CMYK and 16-bit images are converted to RGB8 the way `PIL.Image.convert("RGB")` does (alpha
//! is dropped), and the EXIF orientation is applied.
//!
//! The pixel count is checked against [`DecodeLimits::max_pixels`] from the header, before any
//! pixel buffer is allocated, so a decompression bomb costs nothing.
//!
//! Large JPEGs are decoded at 1/2, 1/4 or 1/8 scale in the DCT domain when the caller needs far
//! fewer pixels (`min_short_side`): a 12-megapixel photo headed for a 256-pixel resize decodes
//! in a fraction of the time, and the result keeps at least twice the pixels the resize asks
//! for, so the antialiased resize still does the last step.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

/// Limits applied to every decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest `width × height` accepted.
    pub max_pixels: u64,
}

impl DecodeLimits {
    /// Pillow refuses more than 89 478 485 pixels by default; 100 megapixels admits every
    /// camera on the market and refuses bombs.
    pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_pixels: Self::DEFAULT_MAX_PIXELS,
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("the file is empty (0 bytes)")]
    Empty,
    #[error("not an image: the content is not JPEG, PNG, WebP, GIF, BMP or TIFF")]
    UnknownFormat,
    #[error("{format} images are not supported; use JPEG, PNG, WebP, GIF, BMP or TIFF")]
    UnsupportedFormat { format: String },
    #[error("{width}×{height} is {pixels} pixels, over the limit of {limit} (a decompression bomb?); raise it with --max-pixels")]
    TooManyPixels {
        width: u64,
        height: u64,
        pixels: u64,
        limit: u64,
    },
    #[error("the image has zero width or height")]
    ZeroSize,
    #[error("corrupt or truncated {format}: {reason}")]
    Corrupt { format: String, reason: String },
}

/// An upright RGB8 image, rows top to bottom, 3 bytes a pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// How a decode went, for the pipeline's accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeInfo {
    /// Width and height stored in the file.
    pub source_size: (u32, u32),
    /// The DCT scale denominator used (1, 2, 4 or 8).
    pub dct_scale: u32,
}

/// Decodes `bytes` into an upright RGB8 image. `min_short_side`, when given, allows a JPEG to
/// be decoded at a reduced scale whose shorter side is still at least that many pixels.
pub fn decode_rgb(
    bytes: &[u8],
    limits: &DecodeLimits,
    min_short_side: Option<u32>,
) -> Result<(RgbImage, DecodeInfo), DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| DecodeError::UnknownFormat)?;
    let supported = matches!(
        format,
        ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp
            | ImageFormat::Tiff
    );
    if !supported {
        return Err(DecodeError::UnsupportedFormat {
            format: format_name(format).to_string(),
        });
    }
    if format == ImageFormat::Jpeg {
        if !jpeg_is_complete(bytes) {
            return Err(DecodeError::Corrupt {
                format: "JPEG".into(),
                reason: "truncated: the image data has no end-of-image marker".into(),
            });
        }
        if let Some(short) = min_short_side {
            if let Some(decoded) = decode_jpeg_scaled(bytes, limits, short)? {
                return Ok(decoded);
            }
        }
    }
    decode_full(bytes, format, limits)
}

/// Whether the last scan of a JPEG is followed by its end-of-image marker (`FF D9`). The
/// decoders fill a cut-off file with grey and call it a success; Pillow refuses it, and so do
/// we. Entropy-coded data never holds `FF D9` or `FF DA` (an `FF` byte is stuffed as `FF 00`),
/// so scanning back from the end, the first of the two found says whether the file is whole.
/// Data appended after the image (camera trailers, MPF) ends in its own `FF D9`.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    for i in (0..bytes.len().saturating_sub(1)).rev() {
        if bytes[i] == 0xFF {
            match bytes[i + 1] {
                0xD9 => return true,
                0xDA => return false,
                _ => {}
            }
        }
    }
    false
}

fn format_name(format: ImageFormat) -> &'static str {
    format
        .extensions_str()
        .first()
        .copied()
        .unwrap_or("unknown")
}

fn corrupt(format: ImageFormat, e: impl ToString) -> DecodeError {
    DecodeError::Corrupt {
        format: format_name(format).to_uppercase(),
        reason: e.to_string(),
    }
}

fn check_pixels(width: u32, height: u32, limits: &DecodeLimits) -> Result<(), DecodeError> {
    if width == 0 || height == 0 {
        return Err(DecodeError::ZeroSize);
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(DecodeError::TooManyPixels {
            width: width.into(),
            height: height.into(),
            pixels,
            limit: limits.max_pixels,
        });
    }
    Ok(())
}

fn decode_full(
    bytes: &[u8],
    format: ImageFormat,
    limits: &DecodeLimits,
) -> Result<(RgbImage, DecodeInfo), DecodeError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = image::Limits::default();
    // 16-bit RGBA is the widest buffer a decoder allocates: 8 bytes a pixel, plus slack for
    // decoder state.
    image_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(image_limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| map_image_error(format, e))?;
    let (width, height) = decoder.dimensions();
    check_pixels(width, height, limits)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| map_image_error(format, e))?;
    image.apply_orientation(orientation);
    let rgb = match image {
        DynamicImage::ImageRgb8(buf) => buf,
        other => other.to_rgb8(),
    };
    let (w, h) = rgb.dimensions();
    Ok((
        RgbImage {
            width: w,
            height: h,
            pixels: rgb.into_raw(),
        },
        DecodeInfo {
            source_size: (width, height),
            dct_scale: 1,
        },
    ))
}

fn map_image_error(format: ImageFormat, e: image::ImageError) -> DecodeError {
    match e {
        image::ImageError::Unsupported(u) => DecodeError::Corrupt {
            format: format_name(format).to_uppercase(),
            reason: format!("unsupported feature: {u}"),
        },
        image::ImageError::Limits(l) => DecodeError::Corrupt {
            format: format_name(format).to_uppercase(),
            reason: format!("exceeds decoder limits: {l}"),
        },
        other => corrupt(format, other),
    }
}

/// The DCT fast path. Returns `Ok(None)` when it does not apply (small image, CMYK or 16-bit
/// JPEG), so the caller falls back to a full decode.
fn decode_jpeg_scaled(
    bytes: &[u8],
    limits: &DecodeLimits,
    min_short_side: u32,
) -> Result<Option<(RgbImage, DecodeInfo)>, DecodeError> {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    if decoder.read_info().is_err() {
        // Let the main decoder produce the error message.
        return Ok(None);
    }
    let Some(info) = decoder.info() else {
        return Ok(None);
    };
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    check_pixels(width, height, limits)?;
    let short = width.min(height);
    // Keep at least twice the pixels the resize needs, so that the final factor-2 (or more)
    // of the reduction is the antialiased resize's: DCT-domain scaling alone is a coarser
    // filter and moves probabilities by a few percent.
    let Some(denominator) = [8u32, 4, 2]
        .into_iter()
        .find(|d| short / d >= min_short_side.max(1).saturating_mul(2))
    else {
        return Ok(None);
    };
    let channels = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => 3,
        jpeg_decoder::PixelFormat::L8 => 1,
        _ => return Ok(None),
    };
    let request_w = width.div_ceil(denominator);
    let request_h = height.div_ceil(denominator);
    let (out_w, out_h) = decoder
        .scale(request_w as u16, request_h as u16)
        .map_err(|e| corrupt(ImageFormat::Jpeg, e))?;
    let raw = decoder
        .decode()
        .map_err(|e| corrupt(ImageFormat::Jpeg, e))?;
    let (out_w, out_h) = (u32::from(out_w), u32::from(out_h));
    let expected = out_w as usize * out_h as usize * channels;
    if raw.len() < expected {
        return Err(corrupt(
            ImageFormat::Jpeg,
            "decoder returned too few pixels",
        ));
    }
    let pixels = if channels == 3 {
        let mut raw = raw;
        raw.truncate(expected);
        raw
    } else {
        raw[..expected].iter().flat_map(|&l| [l, l, l]).collect()
    };
    let buffer = image::RgbImage::from_raw(out_w, out_h, pixels)
        .ok_or_else(|| corrupt(ImageFormat::Jpeg, "pixel buffer has the wrong size"))?;
    let mut image = DynamicImage::ImageRgb8(buffer);
    let orientation = decoder
        .exif_data()
        .and_then(image::metadata::Orientation::from_exif_chunk)
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    image.apply_orientation(orientation);
    let rgb = image.into_rgb8();
    let (w, h) = rgb.dimensions();
    Ok(Some((
        RgbImage {
            width: w,
            height: h,
            pixels: rgb.into_raw(),
        },
        DecodeInfo {
            source_size: (width, height),
            dct_scale: denominator,
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgb};

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn gradient(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
            Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 128])
        }))
    }

    #[test]
    fn every_supported_format_decodes_to_rgb() {
        let img = gradient(40, 30);
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Bmp,
            ImageFormat::Tiff,
            ImageFormat::Gif,
            ImageFormat::WebP,
        ] {
            let bytes = encode(&img, format);
            let (rgb, _) = decode_rgb(&bytes, &DecodeLimits::default(), None)
                .unwrap_or_else(|e| panic!("{format:?}: {e}"));
            assert_eq!((rgb.width, rgb.height), (40, 30), "{format:?}");
            assert_eq!(rgb.pixels.len(), 40 * 30 * 3);
        }
    }

    #[test]
    fn gray_rgba_and_16_bit_become_rgb8() {
        let gray = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(4, 4, image::Luma([77])));
        let (rgb, _) = decode_rgb(
            &encode(&gray, ImageFormat::Png),
            &DecodeLimits::default(),
            None,
        )
        .unwrap();
        assert_eq!(&rgb.pixels[..3], &[77, 77, 77]);

        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            4,
            4,
            image::Rgba([10, 20, 30, 0]),
        ));
        let (rgb, _) = decode_rgb(
            &encode(&rgba, ImageFormat::Png),
            &DecodeLimits::default(),
            None,
        )
        .unwrap();
        assert_eq!(
            &rgb.pixels[..3],
            &[10, 20, 30],
            "alpha is dropped, not premultiplied"
        );

        let deep = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(
            4,
            4,
            Rgb([65535u16, 0, 32896]),
        ));
        let (rgb, _) = decode_rgb(
            &encode(&deep, ImageFormat::Png),
            &DecodeLimits::default(),
            None,
        )
        .unwrap();
        assert_eq!(&rgb.pixels[..3], &[255, 0, 128]);
    }

    /// Files written by Pillow, in `tests/data/`: what PIL's `convert("RGB")` gives for them.
    #[test]
    fn cmyk_jpeg_animated_gif_and_gray_jpeg_match_pillow() {
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data");
        let cases: &[(&str, [u8; 3])] = &[
            ("cmyk-cyan.jpg", [0, 255, 255]),
            ("animated-red-then-blue.gif", [255, 0, 0]),
            ("gray-200.jpg", [200, 200, 200]),
        ];
        for (file, expected) in cases {
            let bytes = std::fs::read(data.join(file)).unwrap();
            let (rgb, _) = decode_rgb(&bytes, &DecodeLimits::default(), None)
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            let px = &rgb.pixels[(5 * rgb.width as usize + 5) * 3..][..3];
            for c in 0..3 {
                assert!(
                    (i32::from(px[c]) - i32::from(expected[c])).abs() <= 3,
                    "{file}: {px:?} vs {expected:?}"
                );
            }
        }
    }

    #[test]
    fn bad_bytes_get_a_reason() {
        let limits = DecodeLimits::default();
        assert_eq!(
            decode_rgb(b"", &limits, None).unwrap_err(),
            DecodeError::Empty
        );
        assert_eq!(
            decode_rgb(b"hello, I am text", &limits, None).unwrap_err(),
            DecodeError::UnknownFormat
        );
        let png = encode(&gradient(64, 64), ImageFormat::Png);
        let truncated = &png[..png.len() / 2];
        assert!(matches!(
            decode_rgb(truncated, &limits, None).unwrap_err(),
            DecodeError::Corrupt { .. }
        ));
        let jpeg = encode(&gradient(64, 64), ImageFormat::Jpeg);
        for cut in [3, 20, jpeg.len() / 2] {
            assert!(
                decode_rgb(&jpeg[..cut], &limits, None).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn pixel_limit_is_checked_before_decoding() {
        let bytes = encode(&gradient(100, 100), ImageFormat::Png);
        let err = decode_rgb(&bytes, &DecodeLimits { max_pixels: 9_999 }, None).unwrap_err();
        assert!(
            matches!(err, DecodeError::TooManyPixels { pixels: 10_000, .. }),
            "{err}"
        );
        let jpeg = encode(&gradient(100, 100), ImageFormat::Jpeg);
        let err = decode_rgb(&jpeg, &DecodeLimits { max_pixels: 9_999 }, Some(10)).unwrap_err();
        assert!(matches!(err, DecodeError::TooManyPixels { .. }), "{err}");
    }

    #[test]
    fn large_jpegs_decode_at_reduced_scale_but_never_below_the_request() {
        let bytes = encode(&gradient(1600, 1200), ImageFormat::Jpeg);
        let limits = DecodeLimits::default();
        let (rgb, info) = decode_rgb(&bytes, &limits, Some(128)).unwrap();
        assert_eq!(info.dct_scale, 4);
        assert_eq!((rgb.width, rgb.height), (400, 300));
        let (rgb, info) = decode_rgb(&bytes, &limits, Some(256)).unwrap();
        assert_eq!((info.dct_scale, rgb.width), (2, 800));
        let (rgb, info) = decode_rgb(&bytes, &limits, Some(350)).unwrap();
        assert_eq!((info.dct_scale, rgb.width), (1, 1600));
        // The scaled decode agrees with a full decode averaged down.
        let (full, _) = decode_rgb(&bytes, &limits, None).unwrap();
        let (small, _) = decode_rgb(&bytes, &limits, Some(75)).unwrap();
        assert_eq!((small.width, small.height), (200, 150));
        let (x, y) = (100usize, 75usize);
        let s = &small.pixels[(y * 200 + x) * 3..][..3];
        let f = &full.pixels[(y * 8 * 1600 + x * 8) * 3..][..3];
        for c in 0..3 {
            assert!(
                (i32::from(s[c]) - i32::from(f[c])).abs() <= 6,
                "{s:?} vs {f:?}"
            );
        }
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A 2×1 JPEG (left red, right blue) whose EXIF says "rotate 90° clockwise" (6).
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(32, 16, |x, _| {
            if x < 16 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        }));
        let mut bytes = Vec::new();
        let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95);
        encoder.set_exif_metadata(exif_with_orientation(6)).unwrap();
        encoder
            .write_image(img.as_bytes(), 32, 16, image::ExtendedColorType::Rgb8)
            .unwrap();
        let (rgb, _) = decode_rgb(&bytes, &DecodeLimits::default(), None).unwrap();
        assert_eq!((rgb.width, rgb.height), (16, 32));
        // After a clockwise quarter turn the left (red) half is on top.
        let top = &rgb.pixels[(2 * 16 + 8) * 3..][..3];
        let bottom = &rgb.pixels[(29 * 16 + 8) * 3..][..3];
        assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");
    }

    /// A minimal little-endian TIFF header with one IFD entry: Orientation.
    fn exif_with_orientation(orientation: u16) -> Vec<u8> {
        let mut e = b"II*\0".to_vec();
        e.extend_from_slice(&8u32.to_le_bytes());
        e.extend_from_slice(&1u16.to_le_bytes());
        e.extend_from_slice(&0x0112u16.to_le_bytes());
        e.extend_from_slice(&3u16.to_le_bytes());
        e.extend_from_slice(&1u32.to_le_bytes());
        e.extend_from_slice(&orientation.to_le_bytes());
        e.extend_from_slice(&[0, 0]);
        e.extend_from_slice(&0u32.to_le_bytes());
        e
    }
}
