//! `deltadit calibrate --plot FILE`: the frontier as a PNG (compute against mean PSNR, one line
//! per policy kind through that kind's own frontier, every measured setting a dot, fewer steps
//! as squares, the policies' shipped defaults ringed). A small rasteriser of its own (lines,
//! markers, a 5×7 bitmap font) over the crate's PNG encoder: no plotting dependency.

use super::Setting;

/// Width and height of [`frontier_png`]'s image, pixels.
pub const SIZE: (usize, usize) = (880, 560);

const WHITE: [u8; 3] = [255, 255, 255];
const GRID: [u8; 3] = [228, 228, 228];
const AXIS: [u8; 3] = [40, 40, 40];

/// The kinds drawn, in legend order, with their colours.
const KINDS: &[(&str, [u8; 3])] = &[
    ("fewer-steps", [20, 20, 20]),
    ("delta", [31, 119, 180]),
    ("delta-adaptive", [255, 127, 14]),
    ("first-block", [44, 160, 44]),
    ("fora", [214, 39, 40]),
    ("schedule", [148, 103, 189]),
];

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Canvas { w, h, px: WHITE.iter().copied().cycle().take(w * h * 3).collect() }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let o = (y as usize * self.w + x as usize) * 3;
            self.px[o..o + 3].copy_from_slice(&c);
        }
    }

    fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
        for y in y0..=y1 {
            for x in x0..=x1 {
                self.set(x, y, c);
            }
        }
    }

    /// A line `thick` pixels wide (Bresenham, each point stamped as a square).
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), thick: i64, c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        let r0 = (thick - 1) / 2;
        loop {
            self.rect(x - r0, y - r0, x - r0 + thick - 1, y - r0 + thick - 1, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    fn disc(&mut self, cx: i64, cy: i64, r: i64, c: [u8; 3]) {
        for y in -r..=r {
            for x in -r..=r {
                if x * x + y * y <= r * r {
                    self.set(cx + x, cy + y, c);
                }
            }
        }
    }

    fn ring(&mut self, cx: i64, cy: i64, r: i64, c: [u8; 3]) {
        for y in -r - 1..=r + 1 {
            for x in -r - 1..=r + 1 {
                let d = x * x + y * y;
                if d <= (r + 1) * (r + 1) && d >= (r - 1) * (r - 1) {
                    self.set(cx + x, cy + y, c);
                }
            }
        }
    }

    /// `text` in the 5×7 font at `scale`, top-left at (x, y); lower case drawn as upper case.
    fn text(&mut self, x: i64, y: i64, text: &str, scale: i64, c: [u8; 3]) -> i64 {
        let mut cx = x;
        for ch in text.chars() {
            let g = glyph(ch.to_ascii_uppercase());
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits >> (4 - col) & 1 == 1 {
                        let (px, py) = (cx + col * scale, y + row as i64 * scale);
                        self.rect(px, py, px + scale - 1, py + scale - 1, c);
                    }
                }
            }
            cx += 6 * scale;
        }
        cx
    }

    /// `text` rotated a quarter turn counter-clockwise (reading upwards), bottom-left at (x, y).
    fn text_up(&mut self, x: i64, y: i64, text: &str, scale: i64, c: [u8; 3]) {
        let mut cy = y;
        for ch in text.chars() {
            let g = glyph(ch.to_ascii_uppercase());
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits >> (4 - col) & 1 == 1 {
                        let (px, py) = (x + row as i64 * scale, cy - col * scale);
                        self.rect(px, py - scale + 1, px + scale - 1, py, c);
                    }
                }
            }
            cy -= 6 * scale;
        }
    }
}

fn text_width(text: &str, scale: i64) -> i64 {
    text.chars().count() as i64 * 6 * scale - scale
}

/// Rows of 5 bits, top first.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        'A' => [14, 17, 17, 31, 17, 17, 17],
        'B' => [30, 17, 17, 30, 17, 17, 30],
        'C' => [14, 17, 16, 16, 16, 17, 14],
        'D' => [28, 18, 17, 17, 17, 18, 28],
        'E' => [31, 16, 16, 30, 16, 16, 31],
        'F' => [31, 16, 16, 30, 16, 16, 16],
        'G' => [14, 17, 16, 23, 17, 17, 15],
        'H' => [17, 17, 17, 31, 17, 17, 17],
        'I' => [14, 4, 4, 4, 4, 4, 14],
        'J' => [7, 2, 2, 2, 2, 18, 12],
        'K' => [17, 18, 20, 24, 20, 18, 17],
        'L' => [16, 16, 16, 16, 16, 16, 31],
        'M' => [17, 27, 21, 21, 17, 17, 17],
        'N' => [17, 17, 25, 21, 19, 17, 17],
        'O' => [14, 17, 17, 17, 17, 17, 14],
        'P' => [30, 17, 17, 30, 16, 16, 16],
        'Q' => [14, 17, 17, 17, 21, 18, 13],
        'R' => [30, 17, 17, 30, 20, 18, 17],
        'S' => [15, 16, 16, 14, 1, 1, 30],
        'T' => [31, 4, 4, 4, 4, 4, 4],
        'U' => [17, 17, 17, 17, 17, 17, 14],
        'V' => [17, 17, 17, 17, 17, 10, 4],
        'W' => [17, 17, 17, 21, 21, 21, 10],
        'X' => [17, 17, 10, 4, 10, 17, 17],
        'Y' => [17, 17, 17, 10, 4, 4, 4],
        'Z' => [31, 1, 2, 4, 8, 16, 31],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        ',' => [0, 0, 0, 0, 12, 4, 8],
        '%' => [24, 25, 2, 4, 8, 19, 3],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        '+' => [0, 4, 4, 31, 4, 4, 0],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        '/' => [0, 1, 2, 4, 8, 16, 0],
        '=' => [0, 0, 31, 0, 31, 0, 0],
        '×' => [0, 17, 10, 4, 10, 17, 0],
        _ => [0; 7],
    }
}

/// The settings of one kind on that kind's own frontier (the best PSNR so far, by compute).
fn envelope(mut pts: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    let mut out: Vec<(f64, f64)> = Vec::new();
    for p in pts {
        if out.last().is_none_or(|l| p.1 > l.1) {
            out.push(p);
        }
    }
    out
}

/// The frontier plot of `settings` (see the module docs) as a PNG of 880 × 560 pixels; `title` above it.
pub fn frontier_png(settings: &[Setting], title: &str) -> Vec<u8> {
    let (w, h) = SIZE;
    let mut cv = Canvas::new(w, h);
    let (left, right, top, bottom) = (70i64, w as i64 - 190, 40i64, h as i64 - 60);
    // settings that save compute (one that never caches is the uncached run)
    let shown: Vec<&Setting> =
        settings.iter().filter(|s| s.psnr.is_finite() && s.compute > 0.0 && s.compute < 1.0 - 1e-9).collect();
    // axes: compute from a tenth below the cheapest setting to 1; PSNR in steps of 5 dB, capped at 70
    let xmin = shown.iter().map(|s| s.compute).fold(1.0f64, f64::min);
    let xmin = ((xmin * 10.0).floor() / 10.0).clamp(0.0, 0.9);
    let (xmax, cap) = (1.0f64, 70.0f64);
    let ylo = shown.iter().map(|s| s.psnr).fold(f64::INFINITY, f64::min);
    let yhi = shown.iter().map(|s| s.psnr.min(cap)).fold(f64::NEG_INFINITY, f64::max);
    let (ymin, ymax) = if ylo.is_finite() && yhi.is_finite() {
        let lo = (ylo / 5.0).floor() * 5.0;
        (lo, ((yhi / 5.0).ceil() * 5.0).max(lo + 5.0))
    } else {
        (0.0, 50.0)
    };
    let px = |x: f64| left + ((x - xmin) / (xmax - xmin) * (right - left) as f64).round() as i64;
    let py = |y: f64| bottom - ((y.min(cap) - ymin) / (ymax - ymin) * (bottom - top) as f64).round() as i64;
    // grid and ticks
    let mut t = (xmin * 10.0).round() as i64;
    while t <= 10 {
        let x = px(t as f64 / 10.0);
        cv.line((x, top), (x, bottom), 1, GRID);
        let label = format!("{}%", t * 10);
        cv.text(x - text_width(&label, 1) / 2, bottom + 8, &label, 1, AXIS);
        t += 1;
    }
    let mut y = ymin;
    while y <= ymax + 1e-9 {
        let yy = py(y);
        cv.line((left, yy), (right, yy), 1, GRID);
        let label = format!("{y:.0}");
        cv.text(left - 8 - text_width(&label, 1), yy - 3, &label, 1, AXIS);
        y += 5.0;
    }
    cv.line((left, bottom), (right, bottom), 1, AXIS);
    cv.line((left, top), (left, bottom), 1, AXIS);
    let xl = "compute (block evaluations / uncached run)";
    cv.text((left + right) / 2 - text_width(xl, 2) / 2, bottom + 26, xl, 2, AXIS);
    cv.text_up(12, (top + bottom) / 2 + text_width("mean PSNR dB", 2) / 2, "mean PSNR dB", 2, AXIS);
    cv.text(left, 12, title, 2, AXIS);
    // the kinds: their dots, then their frontier lines and markers
    for &(kind, color) in KINDS {
        let pts: Vec<(f64, f64)> = shown.iter().filter(|s| s.kind == kind).map(|s| (s.compute, s.psnr)).collect();
        if pts.is_empty() {
            continue;
        }
        let light = color.map(|c| (c as u16 + 2 * 255).div_euclid(3) as u8);
        for &(c, p) in &pts {
            cv.disc(px(c), py(p), 2, light);
        }
        let env = if kind == "fewer-steps" {
            let mut v = pts.clone();
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            v
        } else {
            envelope(pts)
        };
        for pair in env.windows(2) {
            cv.line((px(pair[0].0), py(pair[0].1)), (px(pair[1].0), py(pair[1].1)), 2, color);
        }
        for &(c, p) in &env {
            if kind == "fewer-steps" {
                cv.rect(px(c) - 3, py(p) - 3, px(c) + 3, py(p) + 3, color);
            } else {
                cv.disc(px(c), py(p), 3, color);
            }
        }
    }
    // the shipped defaults, ringed in their kind's colour
    for s in shown.iter().filter(|s| s.default) {
        let color = KINDS.iter().find(|k| k.0 == s.kind).map_or(AXIS, |k| k.1);
        cv.ring(px(s.compute), py(s.psnr), 7, color);
        cv.ring(px(s.compute), py(s.psnr), 8, AXIS);
    }
    // legend
    let lx = right + 16;
    let mut ly = top + 4;
    for &(kind, color) in KINDS {
        if !shown.iter().any(|s| s.kind == kind) {
            continue;
        }
        cv.line((lx, ly + 7), (lx + 22, ly + 7), 2, color);
        if kind == "fewer-steps" {
            cv.rect(lx + 8, ly + 4, lx + 14, ly + 10, color);
        } else {
            cv.disc(lx + 11, ly + 7, 3, color);
        }
        cv.text(lx + 30, ly + 4, kind, 1, AXIS);
        ly += 20;
    }
    if shown.iter().any(|s| s.default) {
        cv.ring(lx + 11, ly + 7, 7, AXIS);
        cv.text(lx + 30, ly + 4, "default", 1, AXIS);
        ly += 20;
    }
    cv.disc(lx + 11, ly + 7, 2, [170, 170, 170]);
    cv.text(lx + 30, ly + 4, "every setting", 1, AXIS);
    crate::quality::png_encode(&cv.px, w, h, 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// IHDR's width, height, bit depth and colour type, and the inflated rows, of a PNG.
    fn decode(png: &[u8]) -> (u32, u32, u8, u8, Vec<u8>) {
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let (mut at, mut ihdr, mut idat) = (8, None, Vec::new());
        while at < png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let kind = &png[at + 4..at + 8];
            let data = &png[at + 8..at + 8 + len];
            let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
            assert_eq!(crc, crate::quality::crc32(&png[at + 4..at + 8 + len]), "chunk CRC");
            match kind {
                b"IHDR" => ihdr = Some(data.to_vec()),
                b"IDAT" => idat.extend_from_slice(data),
                _ => {}
            }
            at += 12 + len;
        }
        let i = ihdr.expect("IHDR");
        let w = u32::from_be_bytes(i[0..4].try_into().unwrap());
        let h = u32::from_be_bytes(i[4..8].try_into().unwrap());
        (w, h, i[8], i[9], miniz_oxide::inflate::decompress_to_vec_zlib(&idat).expect("zlib"))
    }

    fn setting(kind: &str, compute: f64, psnr: f64, default: bool) -> Setting {
        Setting {
            kind: kind.into(),
            spec: kind.into(),
            steps: 20,
            compute,
            time_s: compute,
            speedup: 1.0 / compute,
            psnr,
            quality: None,
            frontier: false,
            default,
        }
    }

    #[test]
    fn the_plot_is_a_png_of_its_size_with_the_lines_drawn() {
        let mut rng = Rng::new(5);
        let mut v = Vec::new();
        for &(kind, _) in KINDS {
            for _ in 0..6 {
                let c = 0.3 + 0.65 * rng.uniform() as f64;
                v.push(setting(kind, c, 20.0 + 30.0 * c + 5.0 * rng.uniform() as f64, false));
            }
        }
        v.push(setting("delta", 0.62, 38.0, true));
        let png = frontier_png(&v, "pixart-digits");
        let (w, h, depth, color, raw) = decode(&png);
        assert_eq!((w as usize, h as usize, depth, color), (SIZE.0, SIZE.1, 8, 2));
        assert_eq!(raw.len(), (SIZE.0 * 3 + 1) * SIZE.1);
        let rows: Vec<&[u8]> = raw.chunks(SIZE.0 * 3 + 1).collect();
        assert!(rows.iter().all(|r| r[0] == 0), "filter none on every row");
        let px = |x: usize, y: usize| -> [u8; 3] { rows[y][1 + 3 * x..4 + 3 * x].try_into().unwrap() };
        let count = |c: [u8; 3]| {
            (0..SIZE.1).flat_map(|y| (0..SIZE.0).map(move |x| (x, y))).filter(|&(x, y)| px(x, y) == c).count()
        };
        assert!(count(WHITE) > SIZE.0 * SIZE.1 / 2, "mostly background");
        for &(kind, color) in KINDS {
            assert!(count(color) > 50, "{kind}'s line");
        }
        // no data: still a valid image, axes only
        let (w, h, ..) = decode(&frontier_png(&[], "empty"));
        assert_eq!((w as usize, h as usize), SIZE);
    }

    #[test]
    fn envelope_keeps_the_rising_frontier() {
        let e = envelope(vec![(0.5, 30.0), (0.4, 31.0), (0.6, 35.0), (0.7, 33.0), (0.8, 40.0)]);
        assert_eq!(e, [(0.4, 31.0), (0.6, 35.0), (0.8, 40.0)]);
    }
}
