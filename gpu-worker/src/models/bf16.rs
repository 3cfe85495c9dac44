//! Linear layers with bf16 weights, multiplied by AVX-512 BF16 dot products (`vdpbf16ps`).
//!
//! A text query streams every weight of the text tower once, so its time is bound by bytes and
//! multiply-adds: bf16 halves the bytes, and one dot-product instruction does twice the
//! multiply-adds of an f32 FMA. Activations are rounded to bf16 where they enter a product; the
//! products and their sums stay in f32. What this costs in accuracy is measured against f32 by
//! `glimpse bench encode --precision bf16` (docs/BENCHMARKS.md).
//!
//! Weights are packed once, at load, into panels of [`PANEL`] output columns: for each pair of
//! input rows `2k, 2k+1`, the panel holds one 32-bit lane per column with the two bf16 values
//! side by side, which is the operand layout of `vdpbf16ps`. A panel is read front to back and
//! stays in the L2 cache while every row of the input passes over it.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::kernels::{PARALLEL_MIN_MACS, f32_slice};

/// Output columns of a panel: four 16-lane registers.
const PANEL: usize = 64;
/// Input rows of one micro-kernel call; with four accumulators per row this uses 24 of the 32
/// vector registers.
const TILE_ROWS: usize = 6;
/// Input rows a worker thread takes at a time when there are many (a batch of images): enough to
/// reuse each panel from the L2 cache, few enough that their pairs stay there too.
const BLOCK_ROWS: usize = 8 * TILE_ROWS;

/// Whether this CPU has the instructions [`PackedLinear`] needs.
pub fn cpu_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rounds to the nearest bf16, ties to even (as `vcvtne2ps2bf16` does); NaN stays NaN. Written
/// without branches, so that packing a row vectorises.
fn to_bf16(value: f32) -> u16 {
    let bits = value.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((bits >> 16) as u16) | 0x40;
    if value.is_nan() { quiet_nan } else { rounded }
}

/// Two values as one `vdpbf16ps` lane: `even` in the low half, `odd` in the high half.
fn bf16_pair(even: f32, odd: f32) -> u32 {
    u32::from(to_bf16(even)) | (u32::from(to_bf16(odd)) << 16)
}

/// Each row of a `(rows, inner)` matrix as `inner / 2` (rounded up) bf16 pairs; an odd last
/// value is paired with zero.
fn pack_rows(values: &[f32], inner: usize) -> Vec<u32> {
    let mut packed = Vec::with_capacity(values.len() / inner * inner.div_ceil(2));
    for row in values.chunks_exact(inner) {
        let mut pairs = row.chunks_exact(2);
        packed.extend(pairs.by_ref().map(|pair| bf16_pair(pair[0], pair[1])));
        if let [last] = pairs.remainder() {
            packed.push(bf16_pair(*last, 0.0));
        }
    }
    packed
}

/// `x · Wᵀ + b` for `W`: `(outputs, inputs)` as stored in checkpoints, kept as bf16 panels.
/// Inference on the CPU only; build it only where [`cpu_supported`] holds.
#[derive(Clone)]
pub struct PackedLinear {
    inputs: usize,
    outputs: usize,
    /// `ceil(inputs / 2)`.
    pairs: usize,
    /// Panel `p`, pair `k`, lane `c` at `(p · pairs + k) · PANEL + c`: the weights of output
    /// `p · PANEL + c` for inputs `2k` (low half) and `2k + 1` (high half); zero past the ends.
    panels: Vec<u32>,
    /// The bias, zero-padded to whole panels.
    bias: Vec<f32>,
}

impl std::fmt::Debug for PackedLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedLinear")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish_non_exhaustive()
    }
}

impl PackedLinear {
    /// Packs `weight`: `(outputs, inputs)` and `bias`: `(outputs)`, both f32.
    pub fn new(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        let (outputs, inputs) = weight.dims2()?;
        if outputs == 0 || inputs == 0 {
            candle_core::bail!("an empty ({outputs}, {inputs}) weight");
        }
        if bias.elem_count() != outputs {
            candle_core::bail!(
                "a bias of {} values for {outputs} outputs",
                bias.elem_count()
            );
        }
        let weight = weight.flatten_all()?.to_vec1::<f32>()?;
        let pairs = inputs.div_ceil(2);
        let panel_count = outputs.div_ceil(PANEL);
        let mut panels = vec![0u32; panel_count * pairs * PANEL];
        for (output, row) in weight.chunks_exact(inputs).enumerate() {
            let (panel, lane) = (output / PANEL, output % PANEL);
            for (k, pair) in pack_rows(row, inputs).into_iter().enumerate() {
                panels[(panel * pairs + k) * PANEL + lane] = pair;
            }
        }
        let mut bias = bias.flatten_all()?.to_vec1::<f32>()?;
        bias.resize(panel_count * PANEL, 0.0);
        Ok(Self {
            inputs,
            outputs,
            pairs,
            panels,
            bias,
        })
    }

    /// `x · Wᵀ + b` for `x`: `(rows, inputs)` f32 on the CPU.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }

    fn panel_count(&self) -> usize {
        self.outputs.div_ceil(PANEL)
    }

    /// Rows `x` (as pairs, `rows × pairs`) times panels `panels`, plus the bias, into `out`:
    /// row `r`, output `p · PANEL + c` at `out[r · stride + (p - panels.start) · PANEL + c]`.
    fn multiply(&self, x: &[u32], panels: std::ops::Range<usize>, out: &mut [f32], stride: usize) {
        let rows = x.len() / self.pairs;
        for panel in panels.clone() {
            let first_output = panel * PANEL;
            let width = PANEL.min(self.outputs - first_output);
            let weights =
                &self.panels[panel * self.pairs * PANEL..(panel + 1) * self.pairs * PANEL];
            let bias = &self.bias[first_output..first_output + PANEL];
            let column = (panel - panels.start) * PANEL;
            let mut row = 0;
            while row < rows {
                let tile = TILE_ROWS.min(rows - row);
                let x_tile = &x[row * self.pairs..(row + tile) * self.pairs];
                let out_tile = &mut out[row * stride + column..];
                tile_kernel(x_tile, self.pairs, weights, bias, out_tile, stride, width);
                row += tile;
            }
        }
    }
}

impl CustomOp1 for PackedLinear {
    fn name(&self) -> &'static str {
        "glimpse-bf16-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, inputs) = layout.shape().dims2()?;
        if inputs != self.inputs {
            candle_core::bail!(
                "bf16 linear: ({rows}, {inputs}) input for {} inputs",
                self.inputs
            );
        }
        if !cpu_supported() {
            candle_core::bail!("bf16 linear: this CPU has no AVX-512 BF16");
        }
        let x = pack_rows(f32_slice(storage, layout, "bf16 linear input")?, inputs);
        let (outputs, pairs, panels) = (self.outputs, self.pairs, self.panel_count());
        let mut out = vec![0f32; rows * outputs];
        let threads = rayon::current_num_threads();
        if rows * inputs * outputs < PARALLEL_MIN_MACS || threads == 1 || rows == 0 {
            self.multiply(&x, 0..panels, &mut out, outputs);
        } else if rows >= BLOCK_ROWS * threads {
            // Many rows: each thread takes blocks of rows across every panel.
            out.par_chunks_mut(BLOCK_ROWS * outputs)
                .zip(x.par_chunks(BLOCK_ROWS * pairs))
                .for_each(|(out, x)| self.multiply(x, 0..panels, out, outputs));
        } else {
            // Few rows (a text query): each thread takes a share of the panels, so the weights
            // are read once in all.
            let share = panels.div_ceil(threads);
            let parts: Vec<(usize, Vec<f32>)> = (0..panels)
                .step_by(share)
                .collect::<Vec<_>>()
                .into_par_iter()
                .map(|first| {
                    let last = (first + share).min(panels);
                    let width = (last - first) * PANEL;
                    let mut part = vec![0f32; rows * width];
                    self.multiply(&x, first..last, &mut part, width);
                    (first, part)
                })
                .collect();
            for (first, part) in parts {
                let width = part.len() / rows;
                let start = first * PANEL;
                let used = width.min(outputs - start);
                for (row, values) in part.chunks_exact(width).enumerate() {
                    out[row * outputs + start..row * outputs + start + used]
                        .copy_from_slice(&values[..used]);
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, outputs))))
    }
}

/// Up to [`TILE_ROWS`] rows of pairs (`x`, `pairs` each) times one panel, plus `bias`, into the
/// first `width` values of each row of `out` (rows `stride` apart).
fn tile_kernel(
    x: &[u32],
    pairs: usize,
    panel: &[u32],
    bias: &[f32],
    out: &mut [f32],
    stride: usize,
    width: usize,
) {
    let rows = x.len() / pairs;
    assert!(
        (1..=TILE_ROWS).contains(&rows)
            && x.len() == rows * pairs
            && panel.len() == pairs * PANEL
            && bias.len() == PANEL
            && (1..=PANEL).contains(&width)
            && out.len() >= (rows - 1) * stride + width,
        "bf16 tile out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    {
        assert!(cpu_supported(), "bf16 tile without AVX-512 BF16");
        // SAFETY: the CPU has the instructions (checked above), and every read and write below
        // stays inside the slices whose lengths were just checked.
        #[allow(unsafe_code)]
        unsafe {
            let args = (x, pairs, panel, bias, out, stride, width);
            match rows {
                1 => avx512::tile::<1>(args),
                2 => avx512::tile::<2>(args),
                3 => avx512::tile::<3>(args),
                4 => avx512::tile::<4>(args),
                5 => avx512::tile::<5>(args),
                _ => avx512::tile::<6>(args),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("bf16 tiles are built only where cpu_supported() holds");
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use std::arch::x86_64::*;

    use super::PANEL;

    pub(super) type TileArgs<'a> = (
        &'a [u32],
        usize,
        &'a [u32],
        &'a [f32],
        &'a mut [f32],
        usize,
        usize,
    );

    /// The micro-kernel: `R` rows × 64 columns held in 4·R registers over all pairs.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX-512 BF16, `x` holds `R · pairs` values, `panel` holds
    /// `pairs · 64`, `bias` 64, and `out` at least `(R - 1) · stride + width`, `width ≤ 64`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile<const R: usize>(
        (x, pairs, panel, bias, out, stride, width): TileArgs,
    ) {
        /// 32 bf16 values (16 lanes of pairs) at `at`.
        #[target_feature(enable = "avx512f,avx512bf16")]
        unsafe fn load(at: *const u32) -> __m512bh {
            // SAFETY: the caller points at 16 readable u32; the two types are both 64 bytes.
            unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(at.cast())) }
        }
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        let (x, panel) = (x.as_ptr(), panel.as_ptr());
        for k in 0..pairs {
            // SAFETY: k < pairs, so `panel + k·64 + 63` and `x + r·pairs + k` (r < R) are in
            // bounds by the contract above.
            unsafe {
                let weights = panel.add(k * PANEL);
                let w = [
                    load(weights),
                    load(weights.add(16)),
                    load(weights.add(32)),
                    load(weights.add(48)),
                ];
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                        *x.add(r * pairs + k) as i32,
                    ));
                    for (acc, w) in acc.iter_mut().zip(w) {
                        *acc = _mm512_dpbf16_ps(*acc, a, w);
                    }
                }
            }
        }
        let out = out.as_mut_ptr();
        for (r, acc) in acc.iter().enumerate() {
            for (j, acc) in acc.iter().enumerate() {
                let first = j * 16;
                if first >= width {
                    break;
                }
                let lanes = (width - first).min(16);
                let mask: __mmask16 = if lanes == 16 {
                    0xffff
                } else {
                    (1 << lanes) - 1
                };
                // SAFETY: `bias` holds 64 values; the mask writes only the first `width` values
                // of row r, which `out` holds by the contract above.
                unsafe {
                    let value = _mm512_add_ps(*acc, _mm512_loadu_ps(bias.as_ptr().add(first)));
                    _mm512_mask_storeu_ps(out.add(r * stride + first), mask, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn seeded(shape: (usize, usize), seed: u64) -> Tensor {
        let mut state = seed;
        let values: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    fn from_bf16(half: u32) -> f32 {
        f32::from_bits(half << 16)
    }

    /// The same arithmetic in plain Rust: bf16 inputs, f32 products and sums.
    fn reference(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Vec<f32> {
        let (rows, inputs) = x.dims2().unwrap();
        let outputs = weight.dims2().unwrap().0;
        let x = pack_rows(&x.flatten_all().unwrap().to_vec1().unwrap(), inputs);
        let w = pack_rows(&weight.flatten_all().unwrap().to_vec1().unwrap(), inputs);
        let bias: Vec<f32> = bias.to_vec1().unwrap();
        let pairs = inputs.div_ceil(2);
        let mut out = Vec::with_capacity(rows * outputs);
        for r in 0..rows {
            for o in 0..outputs {
                let mut sum = 0f32;
                for k in 0..pairs {
                    let (a, b) = (x[r * pairs + k], w[o * pairs + k]);
                    sum += from_bf16(a >> 16) * from_bf16(b >> 16)
                        + from_bf16(a & 0xffff) * from_bf16(b & 0xffff);
                }
                out.push(sum + bias[o]);
            }
        }
        out
    }

    #[test]
    fn rounding_to_bf16_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: ties go to the even mantissa (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(to_bf16(-2.5), 0xc020);
        assert!(from_bf16(u32::from(to_bf16(f32::NAN))).is_nan());
    }

    /// Every path of the kernel (one thread, row blocks, panel shares; whole and partial tiles
    /// and panels; odd inputs) against the plain-Rust arithmetic, and close to f32.
    #[test]
    fn packed_products_equal_the_same_arithmetic_in_plain_rust() {
        if !cpu_supported() {
            eprintln!("SKIPPED: this CPU has no AVX-512 BF16");
            return;
        }
        for (rows, inputs, outputs) in [
            (1, 8, 16),
            (3, 7, 70),
            (7, 64, 130),
            (16, 512, 1536),
            (2 * BLOCK_ROWS * 2 + 5, 96, 200),
        ] {
            let x = seeded((rows, inputs), 1);
            let weight = seeded((outputs, inputs), 2);
            let bias = seeded((1, outputs), 3).flatten_all().unwrap();
            let packed = PackedLinear::new(&weight, &bias).unwrap();
            let got: Vec<f32> = packed
                .forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let want = reference(&x, &weight, &bias);
            let exact = x
                .matmul(&weight.t().unwrap())
                .unwrap()
                .broadcast_add(&bias)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(got.len(), rows * outputs);
            for ((g, w), e) in got.iter().zip(&want).zip(&exact) {
                // Only the order of the f32 sums differs from the reference.
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{rows}×{inputs}×{outputs}: {g} vs {w}"
                );
                // bf16 inputs: about 3 significant digits per value, errors averaging out.
                let scale = (inputs as f32).sqrt();
                assert!(
                    (g - e).abs() <= 2e-2 * scale,
                    "{rows}×{inputs}×{outputs}: {g} vs f32 {e}"
                );
            }
        }
    }

    #[test]
    fn mismatched_inputs_are_errors() {
        let weight = seeded((4, 6), 1);
        let packed = PackedLinear::new(
            &weight,
            &Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        assert!(packed.forward(&seeded((2, 5), 2)).is_err());
        assert!(
            PackedLinear::new(
                &weight,
                &Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap()
            )
            .is_err()
        );
    }
}
