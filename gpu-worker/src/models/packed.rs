//! Linear layers whose weights are packed at load for one of the CPU's micro-kernels
//! ([`Kernel`]), the one that [`Kernel::fastest`] measures fastest for the product at hand.
//!
//! bf16 weights (half the bytes of f32), with one of four kernels:
//!
//! - **AMX-BF16** (Intel Sapphire Rapids and later, where Linux lets the process use the tile
//!   registers): `tdpbf16ps` multiplies a 16 × 32 tile of activations (rounded to bf16) by a
//!   32 × 16 tile of weights into 16 × 16 f32 sums, 8192 multiply-adds per instruction;
//! - **AVX-512 BF16** (`vdpbf16ps`): activations are rounded to bf16 where they enter a product,
//!   and one instruction does twice the multiply-adds of an f32 FMA;
//! - **AVX-512F**, and **AVX2 + FMA** (every x86-64 CPU since 2013–2015, and what most NAS boxes
//!   have): the bf16 weights are widened to f32 in registers (a shift or a mask per register)
//!   and multiplied by the f32 activations with f32 FMAs, so only the weights are rounded.
//!
//! int8 weights (a quarter of the bytes of f32), with **AVX-512 VNNI** (`vpdpbusd`, four times
//! the multiply-adds of an f32 FMA per instruction): each output column's weights scaled to
//! −127..127, each input row's activations to 0..255 between the row's least and greatest value
//! (a scale and an offset per row, computed as the product runs), products summed exactly in
//! i32 and scaled back to f32 per row and column.
//!
//! A text query streams every weight of the text tower once, so its time is bound by bytes; a
//! batch of images is bound by arithmetic. What each costs in accuracy is measured against f32 by
//! `glimpse bench encode --precision bf16|int8` (docs/BENCHMARKS.md).
//!
//! Weights are packed once, at load, into panels of [`Kernel::panel`] output columns: for each
//! group of [`Kernel::group`] consecutive inputs, the panel holds one 32-bit lane per column with
//! the group's weights side by side, the first input in the low bits (the operand layout of
//! `vdpbf16ps` and `vpdpbusd`; for the widening kernels, the high half of a bf16 pair is already
//! the f32 of the odd weight once the low half is masked off, and a 16-bit shift makes the even
//! one). A panel is read from memory once per product and thread, and stays in the L1 or L2
//! cache while every row of the input passes over it.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::kernels::{PARALLEL_MIN_MACS, f32_slice};

/// A micro-kernel, chosen at run time by what the CPU has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// bf16 weights, `tdpbf16ps` over 32-column panels (two tiles wide), 32 rows at a time;
    /// activations rounded to bf16.
    AmxBf16,
    /// bf16 weights, `vdpbf16ps` over 64-column panels; activations rounded to bf16.
    Avx512Bf16,
    /// bf16 weights widened in registers, f32 FMAs over 16-column panels; activations stay f32.
    Avx2Fma,
    /// The same with 512-bit registers over 64-column panels: for CPUs whose `vdpbf16ps` is
    /// slow, or that lack it.
    Avx512Fma,
    /// int8 weights and u8 activations, `vpdpbusd` over 64-column panels, sums in i32.
    Avx512Vnni,
}

impl Kernel {
    /// The kernels with bf16 weights.
    pub const BF16: [Self; 4] = [
        Self::AmxBf16,
        Self::Avx512Bf16,
        Self::Avx512Fma,
        Self::Avx2Fma,
    ];
    /// The kernels with int8 weights.
    pub const INT8: [Self; 1] = [Self::Avx512Vnni];

    /// The instructions the kernel multiplies with, as a person reads them (`AMX-BF16`).
    pub fn instructions(self) -> &'static str {
        match self {
            Self::AmxBf16 => "AMX-BF16",
            Self::Avx512Bf16 => "AVX-512 BF16",
            Self::Avx2Fma => "AVX2 and FMA",
            Self::Avx512Fma => "AVX-512F",
            Self::Avx512Vnni => "AVX-512 VNNI",
        }
    }

    /// Whether this CPU runs any of `kernels`.
    pub fn any_supported(kernels: &[Self]) -> bool {
        kernels.iter().any(|kernel| kernel.cpu_supported())
    }

    /// Whether this CPU has the kernel's instructions.
    fn cpu_supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Self::AmxBf16 => amx::available(),
                Self::Avx512Bf16 => has!("avx512f") && has!("avx512bf16"),
                Self::Avx2Fma => has!("avx2") && has!("fma"),
                Self::Avx512Fma => has!("avx512f"),
                Self::Avx512Vnni => has!("avx512f") && has!("avx512bw") && has!("avx512vnni"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }

    /// Consecutive inputs whose weights share a 32-bit lane: a bf16 pair, an int8 quad.
    fn group(self) -> usize {
        match self {
            Self::AmxBf16 | Self::Avx512Bf16 | Self::Avx2Fma | Self::Avx512Fma => 2,
            Self::Avx512Vnni => 4,
        }
    }

    /// Groups of a row of `inputs` inputs, zero-padded for AMX to whole tile rows (64 bytes).
    fn groups(self, inputs: usize) -> usize {
        let groups = inputs.div_ceil(self.group());
        match self {
            Self::AmxBf16 => groups.next_multiple_of(AMX_PAIRS),
            Self::Avx512Bf16 | Self::Avx2Fma | Self::Avx512Fma | Self::Avx512Vnni => groups,
        }
    }

    /// Output columns of a panel: four 16-lane registers (AVX-512), two 8-lane ones (AVX2), two
    /// 16-column tiles (AMX).
    fn panel(self) -> usize {
        match self {
            Self::AmxBf16 => 32,
            Self::Avx512Bf16 | Self::Avx512Fma | Self::Avx512Vnni => 64,
            Self::Avx2Fma => 16,
        }
    }

    /// Input rows of one micro-kernel call: as many as leave registers for the weights (AVX-512:
    /// 24 accumulators of 32 registers; AVX2: 10 of 16, beside the widened weights; AMX: two
    /// 16-row tiles).
    fn tile_rows(self) -> usize {
        match self {
            Self::AmxBf16 => 32,
            Self::Avx512Bf16 | Self::Avx512Fma | Self::Avx512Vnni => 6,
            Self::Avx2Fma => 5,
        }
    }

    /// Input rows a worker thread takes at a time when there are many (a batch of images): enough
    /// to reuse each panel from the cache, few enough that the rows stay there too.
    fn block_rows(self) -> usize {
        match self {
            // 128 rows: a batch of 32 images (1600 rows) splits into 13 blocks between threads.
            Self::AmxBf16 => 4 * self.tile_rows(),
            Self::Avx512Bf16 | Self::Avx2Fma | Self::Avx512Fma | Self::Avx512Vnni => {
                8 * self.tile_rows()
            }
        }
    }

    /// The fastest way this CPU multiplies `rows` rows by an `(inputs, outputs)` weight, timed
    /// now on random values: `Some` of `kernels` that it runs, or `None` where the f32 GEMM is
    /// faster (or the only way, with `f32` a candidate only when `with_f32`). Each takes the
    /// best of a few runs, in turns, so that a neighbour's burst slows them all; a lone
    /// candidate is returned without being timed.
    ///
    /// No kernel wins everywhere. Few rows (a text query) are bound by the weights' bytes, where
    /// bf16 wins over f32, but not always with `vdpbf16ps`: an Intel core of the Sapphire
    /// Rapids family measured it at a fifth of its f32 FMA rate. Many rows (a batch of images)
    /// are bound by arithmetic, where the f32 GEMM beats both kernels on some CPUs and loses on
    /// others (Zen 4 and 5 issue `vdpbf16ps` on two ports).
    pub fn fastest(
        kernels: &[Self],
        (rows, inputs, outputs): (usize, usize, usize),
        with_f32: bool,
    ) -> Result<Option<Self>> {
        const RUNS: usize = 4;
        let supported: Vec<Self> = kernels
            .iter()
            .copied()
            .filter(|k| k.cpu_supported())
            .collect();
        // Nothing to choose between: nothing to time.
        match (supported.as_slice(), with_f32) {
            ([], _) => return Ok(None),
            ([only], false) => return Ok(Some(*only)),
            _ => {}
        }
        let device = candle_core::Device::Cpu;
        let x = Tensor::rand(-1f32, 1f32, (rows, inputs), &device)?;
        let weight = Tensor::rand(-0.1f32, 0.1f32, (outputs, inputs), &device)?;
        let bias = Tensor::zeros(outputs, candle_core::DType::F32, &device)?;
        let weight_t = weight.t()?.contiguous()?;
        // Each kernel's packing of the weight; `None` for the f32 GEMM.
        let mut candidates = Vec::new();
        for &kernel in &supported {
            candidates.push(Some(PackedLinear::new(&weight, &bias, kernel)?));
        }
        if with_f32 {
            candidates.push(None);
        }
        let run = |packed: &Option<PackedLinear>| -> Result<std::time::Duration> {
            let start = std::time::Instant::now();
            match packed {
                Some(packed) => packed.forward(&x)?,
                None => super::kernels::affine(&x, &weight_t, &bias)?,
            };
            Ok(start.elapsed())
        };
        let mut best = vec![std::time::Duration::MAX; candidates.len()];
        // The first round warms the caches and the pool; it is not counted.
        for round in 0..=RUNS {
            for (packed, best) in candidates.iter().zip(&mut best) {
                let took = run(packed)?;
                if round > 0 {
                    *best = (*best).min(took);
                }
            }
        }
        let fastest = best
            .iter()
            .enumerate()
            .min_by_key(|(_, took)| **took)
            .map_or(0, |(at, _)| at);
        Ok(candidates[fastest].as_ref().map(|packed| packed.kernel))
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

/// Two values as one lane: `even` in the low half, `odd` in the high half.
fn bf16_pair(even: f32, odd: f32) -> u32 {
    u32::from(to_bf16(even)) | (u32::from(to_bf16(odd)) << 16)
}

/// Each row of a `(rows, inner)` matrix as `pairs` (at least `⌈inner / 2⌉`) bf16 pairs; an odd
/// last value is paired with zero, and the pairs past the row's end are zero. On the pool when
/// there are many rows (a batch of images).
fn pack_rows(values: &[f32], inner: usize, pairs: usize) -> Vec<u32> {
    let mut packed = vec![0u32; values.len() / inner * pairs];
    let pack = |(packed, row): (&mut [u32], &[f32])| {
        let (whole, last) = row.as_chunks::<2>();
        for (lane, &[even, odd]) in packed.iter_mut().zip(whole) {
            *lane = bf16_pair(even, odd);
        }
        if let [last] = last {
            packed[whole.len()] = bf16_pair(*last, 0.0);
        }
    };
    if values.len() < PARALLEL_MIN_MACS / 16 {
        packed
            .chunks_mut(pairs)
            .zip(values.chunks_exact(inner))
            .for_each(pack);
    } else {
        packed
            .par_chunks_mut(pairs)
            .zip(values.par_chunks_exact(inner))
            .with_min_len(16)
            .for_each(pack);
    }
    packed
}

/// One output's weights as int8 quads, an incomplete last quad padded with zeros: `w ≈ scale ·
/// q`, with the greatest magnitude at ±127. Returns the quads, `scale` and the sum of the `q`.
fn quantize_weights(row: &[f32]) -> (Vec<u32>, f32, f32) {
    let greatest = row.iter().fold(0f32, |greatest, w| greatest.max(w.abs()));
    let scale = greatest / 127.0;
    let inverse = if scale > 0.0 { scale.recip() } else { 0.0 };
    let values: Vec<i8> = row
        .iter()
        .map(|w| (w * inverse).round().clamp(-127.0, 127.0) as i8)
        .collect();
    let sum = values.iter().map(|&q| i32::from(q)).sum::<i32>() as f32;
    let quads = values
        .chunks(4)
        .map(|quad| {
            let mut lane = [0u8; 4];
            for (byte, q) in lane.iter_mut().zip(quad) {
                *byte = q.to_le_bytes()[0];
            }
            u32::from_le_bytes(lane)
        })
        .collect();
    (quads, scale, sum)
}

/// One row mapped to 0..255 between its least and greatest value, rounded to nearest (ties to
/// even), into `quads`, whose bytes past the row's end are left as they are. Returns its scale
/// and offset: `x ≈ scale · q + offset`. Only where the CPU runs [`Kernel::Avx512Vnni`].
fn quantize_row(row: &[f32], quads: &mut [u32]) -> (f32, f32) {
    assert!(
        row.len() <= quads.len() * 4 && Kernel::Avx512Vnni.cpu_supported(),
        "int8 rows: {} values into {} quads, or a CPU without AVX-512 VNNI",
        row.len(),
        quads.len()
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX-512F, and `quads` holds every byte of the row, as just checked.
    #[allow(unsafe_code)]
    unsafe {
        avx512_vnni::quantize_row(row, quads)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no CPU off x86-64 passes the check above");
}

/// One row's quads to fill, its values, and its scale and offset to set.
type RowToQuantize<'a> = ((&'a mut [u32], &'a [f32]), (&'a mut f32, &'a mut f32));

/// The rows of a product's input as [`Kernel::Avx512Vnni`] takes them.
struct QuantizedRows {
    /// Each row as `⌈inner / 4⌉` quads of u8, an incomplete last quad padded with zeros.
    quads: Vec<u32>,
    /// Row `r`'s value `x` is about `scales[r] · q + offsets[r]`.
    scales: Vec<f32>,
    offsets: Vec<f32>,
}

impl QuantizedRows {
    /// Each row of a `(rows, inner)` matrix mapped to 0..255 between its least and greatest
    /// value, rounded to nearest; on the pool when there are many.
    fn new(values: &[f32], inner: usize) -> Self {
        let (rows, quads_per_row) = (values.len() / inner, inner.div_ceil(4));
        let mut quantized = Self {
            quads: vec![0; rows * quads_per_row],
            scales: vec![0.0; rows],
            offsets: vec![0.0; rows],
        };
        let quantize = |((quads, row), (scale, offset)): RowToQuantize| {
            (*scale, *offset) = quantize_row(row, quads);
        };
        let Self {
            quads,
            scales,
            offsets,
        } = &mut quantized;
        if values.len() < PARALLEL_MIN_MACS / 16 {
            quads
                .chunks_mut(quads_per_row)
                .zip(values.chunks_exact(inner))
                .zip(scales.iter_mut().zip(offsets))
                .for_each(quantize);
        } else {
            quads
                .par_chunks_mut(quads_per_row)
                .zip(values.par_chunks_exact(inner))
                .zip(scales.par_iter_mut().zip(offsets))
                .with_min_len(16)
                .for_each(quantize);
        }
        quantized
    }

    fn rows(&self) -> Rows<'_> {
        Rows::U8Quads {
            quads: &self.quads,
            scales: &self.scales,
            offsets: &self.offsets,
        }
    }
}

/// Per output column of an int8 weight: `w ≈ scales[c] · q`, and `sums[c]` the sum of its `q`
/// (what each row's offset is multiplied by). Zero past the last output.
#[derive(Clone)]
struct QuantizedColumns {
    scales: Vec<f32>,
    sums: Vec<f32>,
}

/// `x · Wᵀ + b` for `W`: `(outputs, inputs)` as stored in checkpoints, kept as panels for one
/// [`Kernel`]. Inference on the CPU only; build it only for a kernel the CPU runs (one that
/// [`Kernel::fastest`] returned).
#[derive(Clone)]
pub struct PackedLinear {
    kernel: Kernel,
    inputs: usize,
    outputs: usize,
    /// [`Kernel::groups`] of `inputs`.
    groups: usize,
    /// Panel `p`, group `k`, lane `c` at `(p · groups + k) · panel + c`: the weights of output
    /// `p · panel + c` for inputs `group · k` (lowest bits) to `group · (k + 1) - 1`; zero past
    /// the ends.
    panels: Vec<u32>,
    /// The bias, zero-padded to whole panels.
    bias: Vec<f32>,
    /// How int8 panels map back to f32; `None` for bf16 ones.
    quantized: Option<QuantizedColumns>,
}

impl std::fmt::Debug for PackedLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedLinear")
            .field("kernel", &self.kernel)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish_non_exhaustive()
    }
}

/// A product's input as a kernel takes it.
#[derive(Clone, Copy)]
enum Rows<'a> {
    /// Each row as bf16 pairs ([`pack_rows`]), for [`Kernel::AmxBf16`] and
    /// [`Kernel::Avx512Bf16`].
    Bf16Pairs(&'a [u32]),
    /// Each row as it is, for the widening kernels.
    F32(&'a [f32]),
    /// Each row as u8 quads with its scale and offset ([`QuantizedRows`]), for
    /// [`Kernel::Avx512Vnni`].
    U8Quads {
        quads: &'a [u32],
        scales: &'a [f32],
        offsets: &'a [f32],
    },
}

impl<'a> Rows<'a> {
    /// Consecutive parts of `rows` rows each (the last may have fewer), rows of `row_length`
    /// values.
    fn parts(self, rows: usize, row_length: usize) -> Vec<Self> {
        let values = rows * row_length;
        match self {
            Self::Bf16Pairs(x) => x.chunks(values).map(Self::Bf16Pairs).collect(),
            Self::F32(x) => x.chunks(values).map(Self::F32).collect(),
            Self::U8Quads {
                quads,
                scales,
                offsets,
            } => quads
                .chunks(values)
                .zip(scales.chunks(rows).zip(offsets.chunks(rows)))
                .map(|(quads, (scales, offsets))| Self::U8Quads {
                    quads,
                    scales,
                    offsets,
                })
                .collect(),
        }
    }
}

impl PackedLinear {
    /// Packs `weight`: `(outputs, inputs)` and `bias`: `(outputs)`, both f32, for `kernel`.
    pub fn new(weight: &Tensor, bias: &Tensor, kernel: Kernel) -> Result<Self> {
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
        let (groups, panel) = (kernel.groups(inputs), kernel.panel());
        let panel_count = outputs.div_ceil(panel);
        let mut panels = vec![0u32; panel_count * groups * panel];
        let mut quantized = (kernel == Kernel::Avx512Vnni).then(|| QuantizedColumns {
            scales: vec![0.0; panel_count * panel],
            sums: vec![0.0; panel_count * panel],
        });
        for (output, row) in weight.chunks_exact(inputs).enumerate() {
            let (first, lane) = (output / panel * groups * panel, output % panel);
            let lanes = match &mut quantized {
                None => pack_rows(row, inputs, groups),
                Some(columns) => {
                    let (quads, scale, sum) = quantize_weights(row);
                    (columns.scales[output], columns.sums[output]) = (scale, sum);
                    quads
                }
            };
            for (k, value) in lanes.into_iter().enumerate() {
                panels[first + k * panel + lane] = value;
            }
        }
        let mut bias = bias.flatten_all()?.to_vec1::<f32>()?;
        bias.resize(panel_count * panel, 0.0);
        Ok(Self {
            kernel,
            inputs,
            outputs,
            groups,
            panels,
            bias,
            quantized,
        })
    }

    /// `x · Wᵀ + b` for `x`: `(rows, inputs)` f32 on the CPU.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }

    fn panel_count(&self) -> usize {
        self.outputs.div_ceil(self.kernel.panel())
    }

    /// Values per row of `x`.
    fn row_length(&self) -> usize {
        match self.kernel {
            Kernel::AmxBf16 | Kernel::Avx512Bf16 | Kernel::Avx512Vnni => self.groups,
            Kernel::Avx2Fma | Kernel::Avx512Fma => self.inputs,
        }
    }

    /// Rows `x` times panels `panels`, plus the bias, into `out`: row `r`, output `p · panel + c`
    /// at `out[r · stride + (p - panels.start) · panel + c]`.
    fn multiply(&self, x: Rows, panels: std::ops::Range<usize>, out: &mut [f32], stride: usize) {
        let (panel_width, tile_rows) = (self.kernel.panel(), self.kernel.tile_rows());
        let panel_size = self.groups * panel_width;
        let tiles = x.parts(tile_rows, self.row_length());
        for panel in panels.clone() {
            let first_output = panel * panel_width;
            let columns = first_output..first_output + panel_width;
            let column = (panel - panels.start) * panel_width;
            for (at, x) in tiles.iter().enumerate() {
                let out = &mut out[at * tile_rows * stride + column..];
                // The tile of rows `x` (whichever their type) at this panel.
                macro_rules! tile {
                    ($x:expr) => {
                        Tile {
                            x: $x,
                            row_length: self.row_length(),
                            panel: &self.panels[panel * panel_size..(panel + 1) * panel_size],
                            bias: &self.bias[columns.clone()],
                            out,
                            stride,
                            width: panel_width.min(self.outputs - first_output),
                        }
                    };
                }
                match *x {
                    Rows::Bf16Pairs(x) if self.kernel == Kernel::AmxBf16 => amx_tile(tile!(x)),
                    Rows::Bf16Pairs(x) => avx512_tile(tile!(x)),
                    Rows::F32(x) => widening_tile(self.kernel, tile!(x)),
                    Rows::U8Quads {
                        quads,
                        scales,
                        offsets,
                    } => {
                        let quantized = self
                            .quantized
                            .as_ref()
                            .expect("u8 rows are made only for int8 weights");
                        vnni_tile(
                            tile!(quads),
                            &Dequantize {
                                row_scales: scales,
                                row_offsets: offsets,
                                column_scales: &quantized.scales[columns.clone()],
                                column_sums: &quantized.sums[columns.clone()],
                            },
                        );
                    }
                }
            }
        }
    }

    /// `x` (`rows` rows) times every panel, plus the bias, on the calling thread or the pool.
    fn product(&self, x: Rows, rows: usize) -> Vec<f32> {
        let (outputs, panels) = (self.outputs, self.panel_count());
        let (panel_width, block_rows) = (self.kernel.panel(), self.kernel.block_rows());
        let mut out = vec![0f32; rows * outputs];
        let threads = rayon::current_num_threads();
        if rows * self.inputs * outputs < PARALLEL_MIN_MACS || threads == 1 || rows == 0 {
            self.multiply(x, 0..panels, &mut out, outputs);
        } else if rows >= block_rows * threads {
            // Many rows: each thread takes blocks of rows across every panel.
            out.par_chunks_mut(block_rows * outputs)
                .zip(x.parts(block_rows, self.row_length()))
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
                    let width = (last - first) * panel_width;
                    let mut part = vec![0f32; rows * width];
                    self.multiply(x, first..last, &mut part, width);
                    (first, part)
                })
                .collect();
            for (first, part) in parts {
                let width = part.len() / rows;
                let start = first * panel_width;
                let used = width.min(outputs - start);
                for (row, values) in part.chunks_exact(width).enumerate() {
                    out[row * outputs + start..row * outputs + start + used]
                        .copy_from_slice(&values[..used]);
                }
            }
        }
        out
    }
}

impl CustomOp1 for PackedLinear {
    fn name(&self) -> &'static str {
        "glimpse-packed-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, inputs) = layout.shape().dims2()?;
        if inputs != self.inputs {
            candle_core::bail!(
                "packed linear: ({rows}, {inputs}) input for {} inputs",
                self.inputs
            );
        }
        if !self.kernel.cpu_supported() {
            candle_core::bail!("packed linear: this CPU cannot run {:?}", self.kernel);
        }
        let x = f32_slice(storage, layout, "packed linear input")?;
        let out = match self.kernel {
            Kernel::AmxBf16 | Kernel::Avx512Bf16 => {
                self.product(Rows::Bf16Pairs(&pack_rows(x, inputs, self.groups)), rows)
            }
            Kernel::Avx2Fma | Kernel::Avx512Fma => self.product(Rows::F32(x), rows),
            Kernel::Avx512Vnni => self.product(QuantizedRows::new(x, inputs).rows(), rows),
        };
        Ok((CpuStorage::F32(out), Shape::from((rows, self.outputs))))
    }
}

/// One micro-kernel call: up to [`Kernel::tile_rows`] rows of `x`, `row_length` values each,
/// times one panel of groups, plus `bias`, into the first `width` values of each row of `out`,
/// rows `stride` apart.
struct Tile<'a, X> {
    x: &'a [X],
    row_length: usize,
    panel: &'a [u32],
    bias: &'a [f32],
    out: &'a mut [f32],
    stride: usize,
    width: usize,
}

impl<X> Tile<'_, X> {
    /// The rows, once the call is checked against what `kernel`'s micro-kernels require: rows
    /// of `groups` groups of inputs, a panel of as many groups, every write inside `out`, and a
    /// CPU that has the kernel.
    fn checked_rows(&self, kernel: Kernel, groups: usize) -> usize {
        let rows = self.x.len() / self.row_length;
        assert!(
            (1..=kernel.tile_rows()).contains(&rows)
                && self.x.len() == rows * self.row_length
                && self.panel.len() == groups * kernel.panel()
                && self.bias.len() == kernel.panel()
                && (1..=kernel.panel()).contains(&self.width)
                && self.out.len() >= (rows - 1) * self.stride + self.width
                && kernel.cpu_supported(),
            "packed tile out of bounds, or {kernel:?} on a CPU without it"
        );
        rows
    }
}

/// Pairs of inputs in one row of an AMX tile (64 bytes): [`Kernel::AmxBf16`]'s rows of
/// activations and groups of weights are padded to a multiple of it.
const AMX_PAIRS: usize = 16;

/// [`Kernel::AmxBf16`]'s micro-kernel: rows of bf16 pairs.
fn amx_tile(tile: Tile<u32>) {
    let rows = tile.checked_rows(Kernel::AmxBf16, tile.row_length);
    assert!(
        tile.row_length.is_multiple_of(AMX_PAIRS),
        "AMX rows of {} pairs: not whole tile rows",
        tile.row_length
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AMX and the process may use it, the rows are whole tile rows, and every
    // read and write of the kernel stays inside the slices whose lengths were just checked.
    #[allow(unsafe_code)]
    unsafe {
        amx::tile(tile, rows);
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("{rows} rows: no CPU off x86-64 passes the check above");
}

/// [`Kernel::Avx512Bf16`]'s micro-kernel: rows of bf16 pairs.
fn avx512_tile(tile: Tile<u32>) {
    let rows = tile.checked_rows(Kernel::Avx512Bf16, tile.row_length);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has the instructions, and every read and write of the kernel stays inside
    // the slices whose lengths were just checked.
    #[allow(unsafe_code)]
    unsafe {
        match rows {
            1 => avx512::tile::<1>(tile),
            2 => avx512::tile::<2>(tile),
            3 => avx512::tile::<3>(tile),
            4 => avx512::tile::<4>(tile),
            5 => avx512::tile::<5>(tile),
            _ => avx512::tile::<6>(tile),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("{rows} rows: no CPU off x86-64 passes the check above");
}

/// The micro-kernels of [`Kernel::Avx2Fma`] and [`Kernel::Avx512Fma`]: rows of f32 inputs.
fn widening_tile(kernel: Kernel, tile: Tile<f32>) {
    let rows = tile.checked_rows(kernel, tile.row_length.div_ceil(2));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as for `avx512_tile`.
    #[allow(unsafe_code)]
    unsafe {
        match (kernel, rows) {
            (Kernel::Avx2Fma, 1) => avx2::tile::<1>(tile),
            (Kernel::Avx2Fma, 2) => avx2::tile::<2>(tile),
            (Kernel::Avx2Fma, 3) => avx2::tile::<3>(tile),
            (Kernel::Avx2Fma, 4) => avx2::tile::<4>(tile),
            (Kernel::Avx2Fma, _) => avx2::tile::<5>(tile),
            (_, 1) => avx512_fma::tile::<1>(tile),
            (_, 2) => avx512_fma::tile::<2>(tile),
            (_, 3) => avx512_fma::tile::<3>(tile),
            (_, 4) => avx512_fma::tile::<4>(tile),
            (_, 5) => avx512_fma::tile::<5>(tile),
            (_, _) => avx512_fma::tile::<6>(tile),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("{rows} rows: no CPU off x86-64 passes the check above");
}

/// How [`Kernel::Avx512Vnni`]'s integer sums become f32: row `r`, column `c` is
/// `(row_scales[r] · sum + row_offsets[r] · column_sums[c]) · column_scales[c] + bias[c]`.
struct Dequantize<'a> {
    row_scales: &'a [f32],
    row_offsets: &'a [f32],
    column_scales: &'a [f32],
    column_sums: &'a [f32],
}

/// [`Kernel::Avx512Vnni`]'s micro-kernel: rows of u8 quads.
fn vnni_tile(tile: Tile<u32>, dequantize: &Dequantize) {
    let rows = tile.checked_rows(Kernel::Avx512Vnni, tile.row_length);
    let panel = Kernel::Avx512Vnni.panel();
    assert!(
        dequantize.row_scales.len() == rows
            && dequantize.row_offsets.len() == rows
            && dequantize.column_scales.len() == panel
            && dequantize.column_sums.len() == panel,
        "int8 tile: scales for {rows} rows and {panel} columns expected"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as for `avx512_tile`, and the scales were just checked.
    #[allow(unsafe_code)]
    unsafe {
        match rows {
            1 => avx512_vnni::tile::<1>(tile, dequantize),
            2 => avx512_vnni::tile::<2>(tile, dequantize),
            3 => avx512_vnni::tile::<3>(tile, dequantize),
            4 => avx512_vnni::tile::<4>(tile, dequantize),
            5 => avx512_vnni::tile::<5>(tile, dequantize),
            _ => avx512_vnni::tile::<6>(tile, dequantize),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("{rows} rows: no CPU off x86-64 passes the check above");
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Tile;

    /// Output columns of a panel.
    const PANEL: usize = 64;

    /// The mask of a register's first `count` lanes (all 16 from 16 on).
    pub(super) fn first_lanes(count: usize) -> __mmask16 {
        if count >= 16 {
            0xffff
        } else {
            (1 << count) - 1
        }
    }

    /// The micro-kernel: `R` rows × 64 columns held in 4·R registers over all pairs.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX-512 BF16, `x` holds `R · pairs` values, `panel` holds
    /// `pairs · 64`, `bias` 64, and `out` at least `(R - 1) · stride + width`, `width ≤ 64`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile<const R: usize>(
        Tile {
            x,
            row_length: pairs,
            panel,
            bias,
            out,
            stride,
            width,
        }: Tile<u32>,
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
        // SAFETY: the caller's contract covers `store`'s.
        unsafe { store(&acc, bias, out, stride, width) };
    }

    /// Writes `R` rows × 64 columns of sums plus `bias` into the first `width` values of each
    /// row of `out`, rows `stride` apart.
    ///
    /// # Safety
    /// The CPU has AVX-512F, `bias` holds 64 values and `out` at least
    /// `(R - 1) · stride + width`, `width ≤ 64`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn store<const R: usize>(
        acc: &[[__m512; 4]; R],
        bias: &[f32],
        out: &mut [f32],
        stride: usize,
        width: usize,
    ) {
        let out = out.as_mut_ptr();
        for (r, acc) in acc.iter().enumerate() {
            for (acc, first) in acc.iter().zip((0..width).step_by(16)) {
                let mask = first_lanes(width - first);
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

/// A widening micro-kernel for one register width: `R` rows × `PANEL` columns held in
/// `R · registers` accumulators over all inputs. Per pair of inputs, each register of weights
/// (lanes of bf16 pairs) is widened to f32 twice: shifted left by 16 bits (the even input's
/// weights) and masked to its high half (the odd input's), then multiplied by the broadcast input
/// with an f32 FMA.
///
/// The generated `tile`'s contract (# Safety): the CPU has the module's features, `x` holds
/// `R · inputs` values, `panel` `⌈inputs / 2⌉ · PANEL`, `bias` `PANEL`, and `out` at least
/// `(R - 1) · stride + width`, `width ≤ PANEL`.
macro_rules! widening_kernel {
    (
        $(#[$doc:meta])*
        mod $module:ident: $feature:literal, $vector:ty, offsets $offsets:expr, per register $lanes:literal;
        $zero:ident, $load:ident, $set1_epi32:ident, $shift:ident, $and:ident, $cast:ident,
        $broadcast:ident, $fmadd:ident, store: $store:path;
        $($extra:item)*
    ) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        mod $module {
            use std::arch::x86_64::*;

            use super::Tile;

            /// Output columns of a panel.
            const PANEL: usize = $offsets.len() * $lanes;

            #[target_feature(enable = $feature)]
            pub(super) unsafe fn tile<const R: usize>(
                Tile {
                    x,
                    row_length: inputs,
                    panel,
                    bias,
                    out,
                    stride,
                    width,
                }: Tile<f32>,
            ) {
                let mut acc: [[$vector; $offsets.len()]; R] = [[$zero(); $offsets.len()]; R];
                let high_half = $set1_epi32(0xffff_0000_u32 as i32);
                let (x, panel) = (x.as_ptr(), panel.as_ptr());
                for k in 0..inputs.div_ceil(2) {
                    // SAFETY: k < ⌈inputs / 2⌉, so `panel + (k + 1)·PANEL - 1` and
                    // `x + r·inputs + 2k` (r < R) are in bounds by the contract above, and `+ 1`
                    // where 2k + 1 < inputs.
                    unsafe {
                        let weights = panel.add(k * PANEL);
                        let lanes = $offsets.map(|at| $load(weights.add(at).cast()));
                        let even = lanes.map(|lane| $cast($shift::<16>(lane)));
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let a = $broadcast(*x.add(r * inputs + 2 * k));
                            for (acc, even) in acc.iter_mut().zip(even) {
                                *acc = $fmadd(a, even, *acc);
                            }
                        }
                        if 2 * k + 1 == inputs {
                            break;
                        }
                        let odd = lanes.map(|lane| $cast($and(lane, high_half)));
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let b = $broadcast(*x.add(r * inputs + 2 * k + 1));
                            for (acc, odd) in acc.iter_mut().zip(odd) {
                                *acc = $fmadd(b, odd, *acc);
                            }
                        }
                    }
                }
                // SAFETY: the caller's contract covers the store's.
                unsafe { $store(&acc, bias, out, stride, width) };
            }

            $($extra)*
        }
    };
}

widening_kernel! {
    /// [`Kernel::Avx2Fma`]'s micro-kernel: 16-column panels in two 8-lane registers.
    mod avx2: "avx2,fma", __m256, offsets [0, 8], per register 8;
    _mm256_setzero_ps, _mm256_loadu_si256, _mm256_set1_epi32, _mm256_slli_epi32, _mm256_and_si256,
    _mm256_castsi256_ps, _mm256_set1_ps, _mm256_fmadd_ps, store: store;

    /// Writes `R` rows × 16 columns of sums plus `bias` into the first `width` values of each
    /// row of `out`, rows `stride` apart.
    ///
    /// # Safety
    /// The CPU has AVX, `bias` holds 16 values and `out` at least `(R - 1) · stride + width`,
    /// `width ≤ 16`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store<const R: usize>(
        acc: &[[__m256; 2]; R],
        bias: &[f32],
        out: &mut [f32],
        stride: usize,
        width: usize,
    ) {
        let out = out.as_mut_ptr();
        for (r, acc) in acc.iter().enumerate() {
            for (acc, first) in acc.iter().zip((0..width).step_by(8)) {
                let lanes = (width - first).min(8);
                let mut values = [0f32; 8];
                // SAFETY: `bias` holds 16 values, `values` 8; the copy writes only the first
                // `width` values of row r, which `out` holds by the contract above.
                unsafe {
                    let value = _mm256_add_ps(*acc, _mm256_loadu_ps(bias.as_ptr().add(first)));
                    _mm256_storeu_ps(values.as_mut_ptr(), value);
                    std::ptr::copy_nonoverlapping(
                        values.as_ptr(),
                        out.add(r * stride + first),
                        lanes,
                    );
                }
            }
        }
    }
}

widening_kernel! {
    /// [`Kernel::Avx512Fma`]'s micro-kernel: 64-column panels (as `vdpbf16ps` takes them) in four
    /// 16-lane registers.
    mod avx512_fma: "avx512f", __m512, offsets [0, 16, 32, 48], per register 16;
    _mm512_setzero_ps, _mm512_loadu_si512, _mm512_set1_epi32, _mm512_slli_epi32, _mm512_and_si512,
    _mm512_castsi512_ps, _mm512_set1_ps, _mm512_fmadd_ps, store: super::avx512::store;
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512_vnni {
    use std::arch::x86_64::*;

    use super::avx512::first_lanes;
    use super::{Dequantize, Tile};

    /// Output columns of a panel.
    const PANEL: usize = 64;

    /// [`super::quantize_row`], 16 values at a time.
    ///
    /// # Safety
    /// The CPU has AVX-512F, and `quads` holds at least `row.len()` bytes.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn quantize_row(row: &[f32], quads: &mut [u32]) -> (f32, f32) {
        let (x, bytes, length) = (row.as_ptr(), quads.as_mut_ptr().cast::<u8>(), row.len());
        // The lanes of the 16 values from `at` that are in the row.
        let lanes = |at: usize| first_lanes(length - at);
        let (mut least, mut greatest) = (
            _mm512_set1_ps(f32::INFINITY),
            _mm512_set1_ps(f32::NEG_INFINITY),
        );
        for at in (0..length).step_by(16) {
            // SAFETY: the mask reads only values of the row.
            unsafe {
                let mask = lanes(at);
                least = _mm512_min_ps(least, _mm512_mask_loadu_ps(least, mask, x.add(at)));
                greatest = _mm512_max_ps(greatest, _mm512_mask_loadu_ps(greatest, mask, x.add(at)));
            }
        }
        let (least, greatest) = (_mm512_reduce_min_ps(least), _mm512_reduce_max_ps(greatest));
        let scale = (greatest - least) / 255.0;
        let inverse = _mm512_set1_ps(if scale > 0.0 { scale.recip() } else { 0.0 });
        let offset = _mm512_set1_ps(least);
        for at in (0..length).step_by(16) {
            // SAFETY: the mask reads only values of the row and writes only as many bytes,
            // which `quads` holds by the contract above.
            unsafe {
                let mask = lanes(at);
                let values = _mm512_maskz_loadu_ps(mask, x.add(at));
                let q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(values, offset), inverse));
                // Unsigned saturation to 0..255.
                _mm512_mask_cvtusepi32_storeu_epi8(bytes.add(at).cast(), mask, q);
            }
        }
        (scale, least)
    }

    /// The micro-kernel: `R` rows × 64 columns held in 4·R registers of i32 sums over all
    /// quads, each `vpdpbusd` adding four u8 × i8 products per lane; scaled back to f32 as they
    /// are stored.
    ///
    /// # Safety
    /// The CPU has AVX-512F, BW and VNNI, `x` holds `R · quads` values, `panel` holds
    /// `quads · 64`, `bias` and the column slices of `dequantize` 64, its row slices `R`, and
    /// `out` at least `(R - 1) · stride + width`, `width ≤ 64`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile<const R: usize>(
        Tile {
            x,
            row_length: quads,
            panel,
            bias,
            out,
            stride,
            width,
        }: Tile<u32>,
        dequantize: &Dequantize,
    ) {
        let mut acc = [[_mm512_setzero_si512(); 4]; R];
        let (x, panel) = (x.as_ptr(), panel.as_ptr());
        for k in 0..quads {
            // SAFETY: k < quads, so `panel + k·64 + 63` and `x + r·quads + k` (r < R) are in
            // bounds by the contract above.
            unsafe {
                let weights = panel.add(k * PANEL);
                let w = [
                    _mm512_loadu_si512(weights.cast()),
                    _mm512_loadu_si512(weights.add(16).cast()),
                    _mm512_loadu_si512(weights.add(32).cast()),
                    _mm512_loadu_si512(weights.add(48).cast()),
                ];
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = _mm512_set1_epi32(*x.add(r * quads + k) as i32);
                    for (acc, w) in acc.iter_mut().zip(w) {
                        *acc = _mm512_dpbusd_epi32(*acc, a, w);
                    }
                }
            }
        }
        let out = out.as_mut_ptr();
        for (r, acc) in acc.iter().enumerate() {
            let scale = _mm512_set1_ps(dequantize.row_scales[r]);
            let offset = _mm512_set1_ps(dequantize.row_offsets[r]);
            for (acc, first) in acc.iter().zip((0..width).step_by(16)) {
                let mask = first_lanes(width - first);
                // SAFETY: `bias` and the column slices hold 64 values; the mask writes only the
                // first `width` values of row r, which `out` holds by the contract above.
                unsafe {
                    let sums = _mm512_loadu_ps(dequantize.column_sums.as_ptr().add(first));
                    let scales = _mm512_loadu_ps(dequantize.column_scales.as_ptr().add(first));
                    let bias = _mm512_loadu_ps(bias.as_ptr().add(first));
                    let row = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(*acc),
                        scale,
                        _mm512_mul_ps(offset, sums),
                    );
                    let value = _mm512_fmadd_ps(row, scales, bias);
                    _mm512_mask_storeu_ps(out.add(r * stride + first), mask, value);
                }
            }
        }
    }
}

/// [`Kernel::AmxBf16`]: the tile registers, driven by inline assembly (Rust's AMX intrinsics are
/// unstable). Tiles 0–3 hold the sums (rows 0–15 and 16–31 × columns 0–15 and 16–31 of the
/// panel), 4–5 the two 16-row tiles of activations, 6–7 the two 16-column tiles of weights.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod amx {
    use std::arch::asm;
    use std::sync::OnceLock;

    use super::{AMX_PAIRS, Tile};

    /// Output columns of a panel.
    const PANEL: usize = 32;
    /// Rows of a tile, and f32 columns of a tile of sums.
    const TILE: usize = 16;

    /// Whether the CPU has AMX-TILE and AMX-BF16 and Linux lets this process use the tile
    /// registers (asked once, for the whole process: `arch_prctl(ARCH_REQ_XCOMP_PERM)`).
    pub(super) fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
            let features = std::arch::x86_64::__cpuid_count(7, 0).edx;
            features & (1 << 22) != 0 && features & (1 << 24) != 0 && tile_data_permitted()
        })
    }

    #[cfg(target_os = "linux")]
    fn tile_data_permitted() -> bool {
        /// `arch_prctl` codes of `<asm/prctl.h>` and the XSAVE feature number of tile data.
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: the request only enlarges this process's saved state; it reads no memory.
        unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn tile_data_permitted() -> bool {
        false
    }

    /// The operand of `ldtilecfg`: palette 1, each tile's rows and bytes per row.
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }

    /// Loads tile `T` from `rows` rows (as configured) starting at `at`, `stride` bytes apart.
    ///
    /// # Safety
    /// Tile `T` is configured, and every row it reads is readable.
    #[inline(always)]
    unsafe fn load<const T: u8, V>(at: *const V, stride: usize) {
        // SAFETY: by the caller's contract.
        unsafe {
            asm!("tileloadd tmm{t}, [{at} + {stride}*1]", t = const T, at = in(reg) at,
                stride = in(reg) stride, options(nostack, readonly, preserves_flags));
        }
    }

    /// Stores tile `T` at `at`, rows `stride` bytes apart.
    ///
    /// # Safety
    /// Tile `T` is configured, and every row it writes is writable.
    #[inline(always)]
    unsafe fn store<const T: u8>(at: *mut f32, stride: usize) {
        // SAFETY: by the caller's contract.
        unsafe {
            asm!("tilestored [{at} + {stride}*1], tmm{t}", t = const T, at = in(reg) at,
                stride = in(reg) stride, options(nostack, preserves_flags));
        }
    }

    /// Tile `C` += tile `A` (rows of bf16 pairs) · tile `B` (rows of pairs of bf16 weights).
    ///
    /// # Safety
    /// The three tiles are configured with matching shapes.
    #[inline(always)]
    unsafe fn multiply_add<const C: u8, const A: u8, const B: u8>() {
        // SAFETY: by the caller's contract.
        unsafe {
            asm!("tdpbf16ps tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B,
                options(nostack, nomem, preserves_flags));
        }
    }

    /// The micro-kernel: `rows` rows × 32 columns, the sums starting at the bias, over all pairs
    /// 16 at a time, stored straight into `out`.
    ///
    /// # Safety
    /// [`available`], `1 ≤ rows ≤ 32`, `x` holds `rows · pairs` values with `pairs` a multiple of
    /// 16, `panel` holds `pairs · 32`, `bias` 32, and `out` at least `(rows - 1) · stride +
    /// width`, `1 ≤ width ≤ 32`.
    pub(super) unsafe fn tile(tile: Tile<u32>, rows: usize) {
        let (pairs, stride, width) = (tile.row_length, tile.stride, tile.width);
        let (upper, left) = (rows.min(TILE), width.min(TILE));
        let (lower, right) = (rows - upper, width - left);
        let mut config = Config {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row: [0; 16],
            rows: [0; 16],
        };
        let mut shape = |tile: usize, rows: usize, columns: usize| {
            // At most 16 rows and 16 four-byte columns: both fit.
            config.rows[tile] = rows as u8;
            config.bytes_per_row[tile] = (4 * columns) as u16;
        };
        shape(0, upper, left);
        shape(4, upper, TILE);
        shape(6, TILE, left);
        if right > 0 {
            shape(1, upper, right);
            shape(7, TILE, right);
        }
        if lower > 0 {
            shape(2, lower, left);
            shape(5, lower, TILE);
            if right > 0 {
                shape(3, lower, right);
            }
        }
        let (x, panel, bias) = (tile.x.as_ptr(), tile.panel.as_ptr(), tile.bias.as_ptr());
        let out = tile.out.as_mut_ptr();
        let (x_stride, panel_stride, out_stride) = (4 * pairs, 4 * PANEL, 4 * stride);
        // SAFETY: each tile used is configured just above with the shape its operations need;
        // every load reads configured rows of `x` (rows < `rows`, pairs < `pairs`), `panel`
        // (groups < `pairs`, columns < `width`) or `bias` (every row from the same values, a
        // stride of 0), and every store writes rows < `rows`, columns < `width` of `out`: all
        // inside the slices by the contract above.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly, preserves_flags));
            load::<0, _>(bias, 0);
            if right > 0 {
                load::<1, _>(bias.add(TILE), 0);
            }
            if lower > 0 {
                load::<2, _>(bias, 0);
                if right > 0 {
                    load::<3, _>(bias.add(TILE), 0);
                }
            }
            for step in (0..pairs).step_by(AMX_PAIRS) {
                let weights = panel.add(step * PANEL);
                load::<4, _>(x.add(step), x_stride);
                load::<6, _>(weights, panel_stride);
                multiply_add::<0, 4, 6>();
                if right > 0 {
                    load::<7, _>(weights.add(TILE), panel_stride);
                    multiply_add::<1, 4, 7>();
                }
                if lower > 0 {
                    load::<5, _>(x.add(TILE * pairs + step), x_stride);
                    multiply_add::<2, 5, 6>();
                    if right > 0 {
                        multiply_add::<3, 5, 7>();
                    }
                }
            }
            store::<0>(out, out_stride);
            if right > 0 {
                store::<1>(out.add(TILE), out_stride);
            }
            if lower > 0 {
                store::<2>(out.add(TILE * stride), out_stride);
                if right > 0 {
                    store::<3>(out.add(TILE * stride + TILE), out_stride);
                }
            }
            // Back to the initial state: cheaper to switch threads, and no tile left configured.
            asm!("tilerelease", options(nostack, nomem, preserves_flags));
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

    /// The same arithmetic in plain Rust: bf16 weights, activations rounded to bf16 where
    /// `kernel` rounds them, f32 products and sums.
    fn reference(kernel: Kernel, x: &Tensor, weight: &Tensor, bias: &Tensor) -> Vec<f32> {
        if kernel == Kernel::Avx512Vnni {
            return int8_reference(x, weight, bias);
        }
        let (rows, inputs) = x.dims2().unwrap();
        let outputs = weight.dims2().unwrap().0;
        let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let x: Vec<[f32; 2]> = match kernel {
            Kernel::AmxBf16 | Kernel::Avx512Bf16 => pack_rows(&x, inputs, inputs.div_ceil(2))
                .into_iter()
                .map(|pair| [from_bf16(pair & 0xffff), from_bf16(pair >> 16)])
                .collect(),
            Kernel::Avx2Fma | Kernel::Avx512Fma | Kernel::Avx512Vnni => x
                .chunks_exact(inputs)
                .flat_map(|row| {
                    let (pairs, last) = row.as_chunks::<2>();
                    pairs
                        .iter()
                        .copied()
                        .chain(last.first().map(|&last| [last, 0.0]))
                })
                .collect(),
        };
        let pairs = inputs.div_ceil(2);
        let w = pack_rows(
            &weight.flatten_all().unwrap().to_vec1().unwrap(),
            inputs,
            pairs,
        );
        let bias: Vec<f32> = bias.to_vec1().unwrap();
        let mut out = Vec::with_capacity(rows * outputs);
        for r in 0..rows {
            for o in 0..outputs {
                let mut sum = 0f32;
                for k in 0..pairs {
                    let ([a, b], w) = (x[r * pairs + k], w[o * pairs + k]);
                    sum += a * from_bf16(w & 0xffff) + b * from_bf16(w >> 16);
                }
                out.push(sum + bias[o]);
            }
        }
        out
    }

    /// The int8 arithmetic in plain Rust: the same quantization, exact integer sums, the same
    /// scaling back.
    fn int8_reference(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Vec<f32> {
        let inputs = x.dims2().unwrap().1;
        let rows = QuantizedRows::new(&x.flatten_all().unwrap().to_vec1().unwrap(), inputs);
        let weight: Vec<f32> = weight.flatten_all().unwrap().to_vec1().unwrap();
        let bias: Vec<f32> = bias.to_vec1().unwrap();
        let quads = inputs.div_ceil(4);
        let mut out = Vec::new();
        for (r, x) in rows.quads.chunks_exact(quads).enumerate() {
            for (w, bias) in weight.chunks_exact(inputs).zip(&bias) {
                let (w, scale, sum) = quantize_weights(w);
                let dot: i32 = x
                    .iter()
                    .zip(&w)
                    .flat_map(|(x, w)| x.to_le_bytes().into_iter().zip(w.to_le_bytes()))
                    .map(|(x, w)| i32::from(x) * i32::from(w as i8))
                    .sum();
                out.push((rows.scales[r] * dot as f32 + rows.offsets[r] * sum) * scale + bias);
            }
        }
        out
    }

    #[test]
    fn quantized_rows_span_each_row_from_its_least_to_its_greatest_value() {
        if !Kernel::Avx512Vnni.cpu_supported() {
            eprintln!("SKIPPED: this CPU cannot run {:?}", Kernel::Avx512Vnni);
            return;
        }
        let rows = QuantizedRows::new(&[-1.0, 0.5, 3.0, 2.0, 7.0, 7.0, 7.0, 7.0], 4);
        let bytes: Vec<[u8; 4]> = rows.quads.iter().map(|quad| quad.to_le_bytes()).collect();
        assert_eq!(bytes, [[0, 96, 255, 191], [0, 0, 0, 0]]);
        assert_eq!(rows.offsets, [-1.0, 7.0]);
        // A constant row: every value is its offset.
        assert_eq!(rows.scales[1], 0.0);
        for (q, x) in bytes[0].iter().zip([-1.0f32, 0.5, 3.0, 2.0]) {
            assert!(
                (rows.scales[0] * f32::from(*q) + rows.offsets[0] - x).abs()
                    <= rows.scales[0] / 2.0
            );
        }
        let (quads, scale, sum) = quantize_weights(&[0.5, -1.27, 0.0, 0.01, 1.0]);
        let bytes: Vec<i8> = quads
            .iter()
            .flat_map(|q| q.to_le_bytes())
            .map(|b| b as i8)
            .collect();
        assert_eq!(bytes, [50, -127, 0, 1, 100, 0, 0, 0]);
        assert!((scale - 0.01).abs() < 1e-7);
        assert_eq!(sum, 24.0);
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

    /// Every path of each kernel this CPU runs (one thread, row blocks, panel shares; whole and
    /// partial tiles and panels; odd inputs) against the plain-Rust arithmetic, and close to f32.
    #[test]
    fn packed_products_equal_the_same_arithmetic_in_plain_rust() {
        for kernel in Kernel::BF16.into_iter().chain(Kernel::INT8) {
            if kernel.cpu_supported() {
                products_equal_plain_rust(kernel);
            } else {
                eprintln!("SKIPPED: this CPU cannot run {kernel:?}");
            }
        }
    }

    fn products_equal_plain_rust(kernel: Kernel) {
        for (rows, inputs, outputs) in [
            (1, 8, 16),
            (3, 7, 70),
            (7, 64, 130),
            (16, 512, 1536),
            (2 * kernel.block_rows() * 2 + 5, 96, 200),
        ] {
            let x = seeded((rows, inputs), 1);
            let weight = seeded((outputs, inputs), 2);
            let bias = seeded((1, outputs), 3).flatten_all().unwrap();
            let packed = PackedLinear::new(&weight, &bias, kernel).unwrap();
            let got: Vec<f32> = packed
                .forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let want = reference(kernel, &x, &weight, &bias);
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
                    "{kernel:?} {rows}×{inputs}×{outputs}: {g} vs {w}"
                );
                // bf16 or int8 values: 2–3 significant digits each, errors averaging out.
                let scale = (inputs as f32).sqrt();
                assert!(
                    (g - e).abs() <= 2e-2 * scale,
                    "{kernel:?} {rows}×{inputs}×{outputs}: {g} vs f32 {e}"
                );
            }
        }
    }

    /// The race runs every candidate for real and names one of them that this CPU runs (which
    /// one depends on the CPU and on its neighbours).
    #[test]
    fn the_fastest_product_is_one_this_cpu_runs() {
        for kernels in [&Kernel::BF16[..], &Kernel::INT8] {
            for shape in [(100, 64, 96), (1, 7, 3)] {
                if let Some(kernel) = Kernel::fastest(kernels, shape, true).unwrap() {
                    assert!(kernel.cpu_supported() && kernels.contains(&kernel));
                }
                let packed_only = Kernel::fastest(kernels, shape, false).unwrap();
                assert_eq!(packed_only.is_some(), Kernel::any_supported(kernels));
            }
        }
    }

    #[test]
    fn mismatched_inputs_are_errors() {
        let weight = seeded((4, 6), 1);
        let packed = PackedLinear::new(
            &weight,
            &Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
            Kernel::Avx2Fma,
        )
        .unwrap();
        assert!(packed.forward(&seeded((2, 5), 2)).is_err());
        assert!(
            PackedLinear::new(
                &weight,
                &Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
                Kernel::Avx2Fma,
            )
            .is_err()
        );
    }
}
