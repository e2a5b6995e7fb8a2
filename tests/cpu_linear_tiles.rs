//! The CPU linear layer's register tiles (src/backend/cpu/linear_tiles/) against a float64
//! reference: the AVX2 + FMA kernel with the backend's SIMD level capped at AVX2 (so it runs on
//! AVX-512 machines too), then, where the CPU has AVX-512, the AVX-512 kernel at the uncapped
//! level. Shapes cover every tile edge of both: x rows at and off the 16- and 32-row panels and
//! their 8- and 16-row last panels (2, 3, 7, 8, 9, 16, 17, 23, 31, 32, 33, 40, 130), weight rows
//! off the 6- and 12-column tiles (1, 5, 7, 11, 13, 200), depths off the 8-wide pack transpose and
//! over one pass (1, 7, 9, 300, MAX_DEPTH + 1, 2·MAX_DEPTH + 100), x read in place from a wider
//! row, one task and several, cut by columns (n ≥ m) and by rows (m > n). One test in its own
//! binary: the level cap is process-wide.

mod common;

use common::{activation64, assert_close, poisoned, random, Rng};
use deltadit::backend::cpu::Cpu;
use deltadit::backend::{Activation, Backend, ColSlice};
use deltadit::internals::cpu::simd::{self, SimdLevel};
use deltadit::internals::cpu::{linear_tiles_run, LINEAR_TILES_MAX_DEPTH, LINEAR_TILES_MIN_ROWS};
use deltadit::DType::F32;

const TOL: f64 = 1e-5;

#[test]
fn linear_tiles_match_f64() {
    let levels: Vec<SimdLevel> =
        [SimdLevel::Avx2, SimdLevel::Avx512].into_iter().filter(|&l| l <= simd::detected()).collect();
    if levels.len() < 2 {
        eprintln!("this CPU runs the tiles at {:?} only (detected: {})", levels, simd::detected());
    }
    for level in levels {
        simd::set_cap(Some(level));
        simd::set_wide_tiles(Some(level == SimdLevel::Avx512));
        assert_eq!(simd::linear_tile_level(), level, "the linear tiles' level follows the cap and the switch");
        assert!(linear_tiles_run(), "the level is {level}, yet the backend would not run the tiles");
        tiles_match_f64(level);
    }
    simd::set_cap(None);
    simd::set_wide_tiles(None);
}

fn tiles_match_f64(level: SimdLevel) {
    assert_eq!(LINEAR_TILES_MIN_ROWS, 2, "the shapes below are chosen around a 2-row minimum");
    let deep = LINEAR_TILES_MAX_DEPTH;
    let mut rng = Rng::new(41);
    // (threads, m, n, k, extra columns around x's k: 0 reads x whole, else in place at column 3)
    let shapes = [
        (1, 2, 7, 5, 0),
        (2, 3, 200, 300, 0),
        (2, 7, 13, 9, 5),
        (1, 8, 1, 1, 0),
        (1, 9, 5, 7, 0),
        (2, 16, 13, 9, 0),
        (1, 17, 11, 9, 0),
        (2, 23, 7, 300, 5),
        (2, 31, 25, 33, 0),
        (1, 32, 12, 40, 4),
        (2, 33, 200, 17, 0),
        (3, 97, 11, 64, 0),
        (3, 40, 200, 48, 0),
        (2, 130, 200, 64, 0),
        (2, 130, 7, 300, 0),
        (3, 130, 13, 300, 4),
        (2, 40, 13, deep + 1, 0),
        (2, 23, 200, deep + 1, 3),
        (1, 17, 5, 2 * deep + 100, 0),
    ];
    for (i, (threads, m, n, k, extra)) in shapes.into_iter().enumerate() {
        let be = Cpu::new(threads);
        let width = k + extra;
        let col = if extra > 0 { 3 } else { 0 };
        let (x, xv) = random(&be, &mut rng, &[m, width], F32, 1.0);
        let (w, wv) = random(&be, &mut rng, &[n, k], F32, 1.0 / (k as f32).sqrt());
        let (b, bv) = random(&be, &mut rng, &[n], F32, 0.5);
        let dot: Vec<f64> = (0..m * n)
            .map(|e| (0..k).map(|d| xv[e / n * width + col + d] as f64 * wv[e % n * k + d] as f64).sum())
            .collect();
        // every activation with and without bias on the small shapes; one combination on the deep ones
        let combos: Vec<(Activation, bool)> = if k > deep {
            vec![([Activation::GeluTanh, Activation::None, Activation::Silu][i % 3], i % 2 == 0)]
        } else {
            [Activation::None, Activation::GeluTanh, Activation::Silu]
                .into_iter()
                .flat_map(|a| [(a, false), (a, true)])
                .collect()
        };
        for (act, with_bias) in combos {
            let want: Vec<f32> = dot
                .iter()
                .enumerate()
                .map(|(e, &s)| activation64(act, s + if with_bias { bv[e % n] as f64 } else { 0.0 }) as f32)
                .collect();
            let mut out = poisoned(&be, &[m, n], F32);
            let bias = with_bias.then_some(&b);
            if extra > 0 {
                be.linear_cols(ColSlice::new(&x, col), &w, bias, act, &mut out).unwrap();
            } else {
                be.linear(&x, &w, bias, act, &mut out).unwrap();
            }
            let what = format!(
                "{level} linear tiles {m}x{n}x{k} (x {width} wide) on {threads} threads {act:?} bias={with_bias}"
            );
            assert_close(&what, &be.download(&out).unwrap(), &want, TOL);
        }
    }
}
