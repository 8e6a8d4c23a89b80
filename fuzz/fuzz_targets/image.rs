//! Image decoding and preprocessing: any bytes either decode within the pixel limit and
//! preprocess into a finite tensor of the model's size, or are refused with a `DecodeError`.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use singlepoint_model::{decode_rgb, DecodeLimits, Manifest, Preprocess, Preprocessor};

/// The two bundled preprocessings: RGB resize-and-crop to 224, and gray exact 8×8.
static PREPROCESS: LazyLock<[Preprocess; 2]> = LazyLock::new(|| {
    let load = |text: &str| {
        let manifest = Manifest::from_json(Path::new("model.json"), text).unwrap();
        manifest.image.expect("an image model").preprocess
    };
    [
        load(include_str!("../../models/efficientnet-lite0/model.json")),
        load(include_str!("../../models/digits-cnn/model.json")),
    ]
});

/// Small enough that libFuzzer's 2 GB RSS limit is never the finding; the limit's logic is the
/// same at any value.
const LIMITS: DecodeLimits = DecodeLimits {
    max_pixels: 4_000_000,
};

fuzz_target!(|data: &[u8]| {
    // The input is the file itself (so photos and tests/hostile seed it as they are); its
    // length picks the preprocessing and whether a JPEG may decode at a reduced scale.
    let (which, bytes) = (data.len(), data);
    let preprocess = &PREPROCESS[which & 1];
    let scaled = (which & 2 != 0).then(|| preprocess.min_source_short_side());
    let Ok((image, _info)) = decode_rgb(bytes, &LIMITS, scaled) else {
        return;
    };
    assert!(image.width > 0 && image.height > 0);
    assert!(u64::from(image.width) * u64::from(image.height) <= LIMITS.max_pixels);
    assert_eq!(
        image.pixels.len(),
        image.width as usize * image.height as usize * 3
    );
    let mut pre = Preprocessor::new(preprocess);
    let mut out = vec![0f32; pre.item_len()];
    if pre.run(&image, &mut out).is_ok() {
        assert!(out.iter().all(|v| v.is_finite()));
    }
});
