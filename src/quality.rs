//! Image quality of pixel-space samples: PSNR and SSIM against a reference image, a digit
//! classifier (models/digits-classifier), and PNG grids to look at. The images are the final
//! latents of a pixel-space model (1 or 3 channels, values in [-1, 1]); metrics clamp them to
//! [-1, 1] and map them to [0, 1] first.

use crate::io::safetensors_file::SafetensorsFile;
use crate::{Error, Result};
use std::path::Path;

/// Pixel values in [0, 1] of an image stored in [-1, 1].
fn unit(v: f32) -> f64 {
    ((v.clamp(-1.0, 1.0) as f64) + 1.0) / 2.0
}

/// Whether a model with `channels` input channels works in pixel space (no VAE between its
/// samples and images).
pub fn is_pixel_space(channels: usize) -> bool {
    channels == 1 || channels == 3
}

/// Ok for a pixel-space model; else the error, naming option `param`, that an image of a latent
/// model's samples needs its VAE.
pub fn require_pixel_space(param: &str, channels: usize) -> Result<()> {
    if is_pixel_space(channels) {
        return Ok(());
    }
    Err(Error::param(
        param,
        format!("a model of {channels} latent channels"),
        "a pixel-space model (1 or 3 channels): a latent model's samples are latents, and decoding \
         them needs its VAE (diffusers' AutoencoderKL on the latents `sample --output` writes)",
    ))
}

/// PSNR in dB of `a` against `b` (same length, values in [-1, 1]) on the [0, 1] scale; 100 dB
/// for identical images (the mean squared error is 0).
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let mse = a.iter().zip(b).map(|(&x, &y)| (unit(x) - unit(y)).powi(2)).sum::<f64>() / a.len().max(1) as f64;
    if mse <= 1e-10 {
        100.0
    } else {
        -10.0 * mse.log10()
    }
}

/// SSIM of two `c × h × w` images (values in [-1, 1], mapped to [0, 1]): the mean over channels
/// and over every 7 × 7 window (uniform weights, sample covariances, C1 = 0.01², C2 = 0.03²), as
/// scikit-image's `structural_similarity` computes it by default. Images smaller than 7 pixels a
/// side use one window over the whole image.
pub fn ssim(a: &[f32], b: &[f32], [c, h, w]: [usize; 3]) -> f64 {
    const C1: f64 = 0.01 * 0.01;
    const C2: f64 = 0.03 * 0.03;
    let win = 7.min(h).min(w).max(1);
    let n = (win * win) as f64;
    let cov_norm = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
    let (mut total, mut count) = (0.0, 0usize);
    for ch in 0..c {
        let at = |img: &[f32], y: usize, x: usize| unit(img[(ch * h + y) * w + x]);
        for y0 in 0..=h - win {
            for x0 in 0..=w - win {
                let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0);
                for y in y0..y0 + win {
                    for x in x0..x0 + win {
                        let (p, q) = (at(a, y, x), at(b, y, x));
                        sa += p;
                        sb += q;
                        saa += p * p;
                        sbb += q * q;
                        sab += p * q;
                    }
                }
                let (ma, mb) = (sa / n, sb / n);
                let va = (saa / n - ma * ma) * cov_norm;
                let vb = (sbb / n - mb * mb) * cov_norm;
                let vab = (sab / n - ma * mb) * cov_norm;
                total += ((2.0 * ma * mb + C1) * (2.0 * vab + C2)) / ((ma * ma + mb * mb + C1) * (va + vb + C2));
                count += 1;
            }
        }
    }
    total / count.max(1) as f64
}

/// The digits classifier of models/digits-classifier: `argmax(fc2 · relu(fc1 · x + b1) + b2)` on
/// a 16 × 16 one-channel image clamped to [-1, 1] (its README.md states the computation).
pub struct Classifier {
    fc1: (Vec<f32>, Vec<f32>),
    fc2: (Vec<f32>, Vec<f32>),
    inputs: usize,
    hidden: usize,
    classes: usize,
}

impl Classifier {
    /// Loads `classifier.safetensors` (keys fc1.weight, fc1.bias, fc2.weight, fc2.bias).
    pub fn load(path: &Path) -> Result<Self> {
        let f = SafetensorsFile::open(path)?;
        let get = |k: &str| -> Result<(Vec<f32>, Vec<usize>)> {
            let t = f
                .get(k)
                .ok_or_else(|| Error::MissingWeight { key: k.into(), source_desc: path.display().to_string() })?;
            Ok((t.to_f32(k)?, t.shape.to_vec()))
        };
        let (w1, s1) = get("fc1.weight")?;
        let (b1, _) = get("fc1.bias")?;
        let (w2, s2) = get("fc2.weight")?;
        let (b2, _) = get("fc2.bias")?;
        let ok = s1.len() == 2 && s2.len() == 2 && s2[1] == s1[0] && b1.len() == s1[0] && b2.len() == s2[0];
        if !ok {
            return Err(Error::WeightShape {
                key: "fc2.weight".into(),
                expected: vec![0, s1.first().copied().unwrap_or(0)],
                found: s2,
            });
        }
        Ok(Classifier { inputs: s1[1], hidden: s1[0], classes: s2[0], fc1: (w1, b1), fc2: (w2, b2) })
    }

    /// Pixels of the images it reads.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// The predicted class of one image.
    pub fn predict(&self, image: &[f32]) -> Result<usize> {
        if image.len() != self.inputs {
            return Err(Error::input(
                "image",
                format!("the classifier reads {} pixels, found {}", self.inputs, image.len()),
            ));
        }
        let x: Vec<f32> = image.iter().map(|v| v.clamp(-1.0, 1.0)).collect();
        let (w1, b1) = &self.fc1;
        let h: Vec<f32> = (0..self.hidden)
            .map(|j| {
                (b1[j] + w1[j * self.inputs..][..self.inputs].iter().zip(&x).map(|(a, b)| a * b).sum::<f32>()).max(0.0)
            })
            .collect();
        let (w2, b2) = &self.fc2;
        let logits = (0..self.classes)
            .map(|k| b2[k] + w2[k * self.hidden..][..self.hidden].iter().zip(&h).map(|(a, b)| a * b).sum::<f32>());
        Ok(logits.enumerate().fold((0, f32::NEG_INFINITY), |best, (k, v)| if v > best.1 { (k, v) } else { best }).0)
    }
}

/// A PNG of `images` (`n × c × h × w` values in [-1, 1], c = 1 or 3) laid out `cols` to a row,
/// each pixel drawn `scale × scale`, with a one-pixel gray border around each image.
pub fn png_grid(images: &[f32], [n, c, h, w]: [usize; 4], cols: usize, scale: usize) -> Result<Vec<u8>> {
    if !is_pixel_space(c) || images.len() != n * c * h * w || n == 0 {
        return Err(Error::input(
            "images",
            format!(
                "expected [n, 1 or 3, H, W] pixel-space samples, found {} values for {:?}",
                images.len(),
                [n, c, h, w]
            ),
        ));
    }
    let (cols, scale) = (cols.clamp(1, n), scale.max(1));
    let rows = n.div_ceil(cols);
    let (cw, ch) = (w * scale + 1, h * scale + 1);
    let (width, height) = (cols * cw + 1, rows * ch + 1);
    // One byte a pixel for gray images, three for RGB; 128 (mid-gray) is the border.
    let mut pixels = vec![128u8; width * height * c];
    for i in 0..n {
        let (ox, oy) = (1 + (i % cols) * cw, 1 + (i / cols) * ch);
        for y in 0..h * scale {
            for x in 0..w * scale {
                let o = ((oy + y) * width + ox + x) * c;
                for (k, out) in pixels[o..o + c].iter_mut().enumerate() {
                    *out = (unit(images[((i * c + k) * h + y / scale) * w + x / scale]) * 255.0).round() as u8;
                }
            }
        }
    }
    Ok(png_encode(&pixels, width, height, c))
}

/// An 8-bit gray (`channels` 1) or RGB (3) PNG, its image data deflated (zlib, miniz_oxide).
pub(crate) fn png_encode(pixels: &[u8], width: usize, height: usize, channels: usize) -> Vec<u8> {
    let mut raw = Vec::with_capacity((width * channels + 1) * height);
    for row in pixels.chunks(width * channels) {
        raw.push(0); // filter: none (the scaled pixels repeat, which deflate finds anyway)
        raw.extend_from_slice(row);
    }
    let z = miniz_oxide::deflate::compress_to_vec_zlib(&raw, 9);
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(width as u32).to_be_bytes());
    ihdr.extend_from_slice(&(height as u32).to_be_bytes());
    let color_type = if channels == 3 { 2 } else { 0 };
    ihdr.extend_from_slice(&[8, color_type, 0, 0, 0]); // 8-bit, gray/RGB, deflate, no filter, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(b"IHDR", &ihdr[..]), (b"IDAT", &z[..]), (b"IEND", &[][..])] {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(data);
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    png
}

pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_and_ssim_of_known_images() {
        let a: Vec<f32> = (0..256).map(|i| ((i * 37 % 256) as f32 / 127.5) - 1.0).collect();
        assert_eq!(psnr(&a, &a), 100.0);
        assert!((ssim(&a, &a, [1, 16, 16]) - 1.0).abs() < 1e-12);
        // A constant offset of 0.25 in [-1, 1] (exact in f32) is 1/8 on [0, 1]: 20·log10(8) dB.
        let b: Vec<f32> = vec![0.0; 256];
        let c: Vec<f32> = vec![0.25; 256];
        assert!((psnr(&b, &c) - 20.0 * 8f64.log10()).abs() < 1e-9);
        // Flat images differing by a constant: SSIM = luminance term only,
        // (2·0.5·0.625 + C1) / (0.5² + 0.625² + C1).
        let want = (2.0 * 0.5 * 0.625 + 1e-4) / (0.25 + 0.390625 + 1e-4);
        assert!((ssim(&b, &c, [1, 16, 16]) - want).abs() < 1e-9);
        // Noise lowers SSIM below 1.
        let noisy: Vec<f32> = a.iter().enumerate().map(|(i, v)| v + if i % 3 == 0 { 0.3 } else { -0.2 }).collect();
        let s = ssim(&a, &noisy, [1, 16, 16]);
        assert!(s < 0.99 && s > 0.0, "{s}");
    }

    #[test]
    fn png_is_well_formed() {
        let img: Vec<f32> = (0..2 * 16).map(|i| (i as f32 / 16.0) - 1.0).collect();
        let png = png_grid(&img, [2, 1, 4, 4], 2, 2).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 2 * 9 + 1);
        assert_eq!(crc32(b"IEND"), 0xae42_6082);
        assert_eq!(png[25], 0, "color type gray");
        // The image data inflates back to the filtered rows: border gray, then image 0's first
        // row (values -1, -15/16, …: the first pixel is black), each pixel twice.
        let idat_len = u32::from_be_bytes(png[33..37].try_into().unwrap()) as usize;
        assert_eq!(&png[37..41], b"IDAT");
        let raw = miniz_oxide::inflate::decompress_to_vec_zlib(&png[41..41 + idat_len]).unwrap();
        let width = 2 * 9 + 1;
        assert_eq!(raw.len(), (width + 1) * (9 + 1));
        assert!(raw[1..=width].iter().all(|&v| v == 128), "top border");
        let row1 = &raw[width + 1..2 * (width + 1)];
        assert_eq!((row1[0], row1[1], row1[2], row1[3]), (0, 128, 0, 0), "filter, border, pixel 0 twice");
        assert_eq!(row1[4], (((1.0 / 16.0) / 2.0) * 255.0f32).round() as u8);
        assert!(png_grid(&img, [2, 4, 2, 2], 2, 1).is_err(), "4 channels is a latent model");
    }
}
