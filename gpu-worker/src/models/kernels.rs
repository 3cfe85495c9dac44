//! CPU kernels for the transformer blocks, as candle custom ops, and the same operations in
//! candle's own ops for other devices and precisions (a GPU in bf16).
//!
//! candle runs every op on its thread pool once it is large enough, and wakes the pool for every
//! matrix product. For the few-token products of a text query that wake-up costs more than the
//! product itself. These kernels decide per call: one thread for small work, the rayon pool for
//! large work. Inference only: they have no backward pass.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Multiply-adds below which a product runs on the calling thread.
pub(super) const PARALLEL_MIN_MACS: usize = 256 << 10;

pub(super) fn f32_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else {
        candle_core::bail!("{what}: expected f32 values");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

/// A matrix inside a slice: element `(r, c)` is `data[r · row_stride + c · col_stride]`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl View<'_> {
    /// Whether every element lies inside `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` with `accumulate`; `dst` is `lhs.rows × rhs.cols`,
/// row-major and contiguous.
fn gemm_into(
    dst: &mut [f32],
    accumulate: bool,
    lhs: View,
    rhs: View,
    parallelism: gemm::Parallelism,
) -> Result<()> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    if rhs.rows != k || dst.len() != m * n || !lhs.in_bounds() || !rhs.in_bounds() {
        candle_core::bail!(
            "gemm: ({m}×{k}) · ({}×{n}) into {} values",
            rhs.rows,
            dst.len()
        );
    }
    // SAFETY: every element the strides reach lies inside its slice (checked just above), `dst`
    // holds exactly m × n contiguous values, and a `&mut` slice aliases neither input.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

/// `x · w + b` for `x`: `(rows, in)`, `w`: `(in, out)`, `b`: `(out)`, all contiguous f32.
struct Affine;

impl CustomOp3 for Affine {
    fn name(&self) -> &'static str {
        "glimpse-affine"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, inner) = x_layout.shape().dims2()?;
        let (w_inner, cols) = w_layout.shape().dims2()?;
        if inner != w_inner || b_layout.shape().elem_count() != cols {
            candle_core::bail!(
                "affine: ({rows}, {inner}) · ({w_inner}, {cols}) + ({}) do not fit",
                b_layout.shape().elem_count()
            );
        }
        let x = f32_slice(x, x_layout, "affine input")?;
        let w = f32_slice(w, w_layout, "affine weight")?;
        let b = f32_slice(b, b_layout, "affine bias")?;
        let mut out: Vec<f32> = b.repeat(rows);
        let parallelism = if rows * inner * cols >= PARALLEL_MIN_MACS {
            gemm::Parallelism::Rayon(rayon::current_num_threads())
        } else {
            gemm::Parallelism::None
        };
        let lhs = View {
            data: x,
            rows,
            cols: inner,
            row_stride: inner,
            col_stride: 1,
        };
        let rhs = View {
            data: w,
            rows: inner,
            cols,
            row_stride: cols,
            col_stride: 1,
        };
        gemm_into(&mut out, true, lhs, rhs, parallelism)?;
        Ok((CpuStorage::F32(out), Shape::from((rows, cols))))
    }
}

/// Whether the CPU kernels apply: f32 values in main memory. Anything else (a GPU, bf16) takes
/// candle's own ops.
fn cpu_f32(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// `x · w + b`; `w` is `(in, out)` and contiguous, `b` is `(out)`.
pub fn affine(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    if cpu_f32(x) {
        x.contiguous()?.apply_op3_no_bwd(w, b, &Affine)
    } else {
        x.broadcast_matmul(w)?.broadcast_add(b)
    }
}

/// `x · sigmoid(1.702 x)` in one pass (candle needs three).
struct QuickGelu;

impl CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "glimpse-quick-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = f32_slice(storage, layout, "quick_gelu input")?;
        let mut out = xs.to_vec();
        let apply = |chunk: &mut [f32]| {
            for x in chunk {
                *x /= 1.0 + (-1.702 * *x).exp();
            }
        };
        if out.len() >= PARALLEL_MIN_MACS {
            out.par_chunks_mut(16 << 10).for_each(apply);
        } else {
            apply(&mut out);
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// `x · sigmoid(1.702 x)`, the activation of OpenAI's CLIP checkpoints.
pub fn quick_gelu(xs: &Tensor) -> Result<Tensor> {
    if cpu_f32(xs) {
        xs.contiguous()?.apply_op1_no_bwd(&QuickGelu)
    } else {
        xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?
    }
}

/// Multi-head scaled-dot-product attention over a fused q|k|v projection, the scale already
/// folded into q.
struct Attention {
    batch: usize,
    heads: usize,
    causal: bool,
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "glimpse-attention"
    }

    fn cpu_fwd(&self, qkv: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, three_width) = layout.shape().dims2()?;
        let width = three_width / 3;
        if three_width % 3 != 0 || width % self.heads != 0 || rows % self.batch != 0 {
            candle_core::bail!(
                "attention: ({rows}, {three_width}) is not q|k|v of {} heads over {} sequences",
                self.heads,
                self.batch
            );
        }
        let qkv = f32_slice(qkv, layout, "attention input")?;
        let shape = HeadShape {
            tokens: rows / self.batch,
            width,
            head_dim: width / self.heads,
            causal: self.causal,
        };
        let heads: Vec<(usize, usize)> = (0..self.batch)
            .flat_map(|sequence| (0..self.heads).map(move |head| (sequence, head)))
            .collect();
        let attend = |&(sequence, head): &(usize, usize)| {
            let start = sequence * shape.tokens * three_width + head * shape.head_dim;
            attend_head(&qkv[start..], &shape)
        };
        let contexts: Vec<Vec<f32>> = if 2 * rows * shape.tokens * width >= PARALLEL_MIN_MACS {
            heads.par_iter().map(attend).collect::<Result<_>>()?
        } else {
            heads.iter().map(attend).collect::<Result<_>>()?
        };
        let mut out = vec![0f32; rows * width];
        for (&(sequence, head), context) in heads.iter().zip(&contexts) {
            for (token, values) in context.chunks_exact(shape.head_dim).enumerate() {
                let row = sequence * shape.tokens + token;
                out[row * width + head * shape.head_dim..][..shape.head_dim]
                    .copy_from_slice(values);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, width))))
    }
}

struct HeadShape {
    tokens: usize,
    width: usize,
    head_dim: usize,
    causal: bool,
}

/// One head of one sequence. `qkv` starts at this head's q columns of the sequence's first token
/// in a `(tokens, 3·width)` row-major matrix; returns the `(tokens, head_dim)` context.
fn attend_head(qkv: &[f32], shape: &HeadShape) -> Result<Vec<f32>> {
    let HeadShape {
        tokens,
        width,
        head_dim,
        causal,
    } = *shape;
    // Block `part` (0: q, 1: k, 2: v) of this head: tokens × head_dim, rows 3·width apart.
    let block = |part: usize| View {
        data: &qkv[part * width..],
        rows: tokens,
        cols: head_dim,
        row_stride: 3 * width,
        col_stride: 1,
    };
    let k = block(1);
    let k_transposed = View {
        rows: head_dim,
        cols: tokens,
        row_stride: 1,
        col_stride: k.row_stride,
        ..k
    };
    let mut scores = vec![0f32; tokens * tokens];
    gemm_into(
        &mut scores,
        false,
        block(0),
        k_transposed,
        gemm::Parallelism::None,
    )?;
    for (i, row) in scores.chunks_exact_mut(tokens).enumerate() {
        let visible = if causal { i + 1 } else { tokens };
        let (kept, masked) = row.split_at_mut(visible);
        masked.fill(0.0);
        let max = kept.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for score in kept.iter_mut() {
            *score = (*score - max).exp();
            sum += *score;
        }
        kept.iter_mut().for_each(|p| *p /= sum);
    }
    let probabilities = View {
        data: &scores,
        rows: tokens,
        cols: tokens,
        row_stride: tokens,
        col_stride: 1,
    };
    let mut context = vec![0f32; tokens * head_dim];
    gemm_into(
        &mut context,
        false,
        probabilities,
        block(2),
        gemm::Parallelism::None,
    )?;
    Ok(context)
}

/// Attention over `qkv`: `(batch · tokens, 3 · width)`, q already scaled; returns
/// `(batch · tokens, width)` with heads side by side, ready for the output projection.
pub fn attention(qkv: &Tensor, batch: usize, heads: usize, causal: bool) -> Result<Tensor> {
    if cpu_f32(qkv) {
        qkv.contiguous()?.apply_op1_no_bwd(&Attention {
            batch,
            heads,
            causal,
        })
    } else {
        attention_in_candle_ops(qkv, batch, heads, causal)
    }
}

/// [`attention`] in candle's own ops (any device, any float type).
fn attention_in_candle_ops(
    qkv: &Tensor,
    batch: usize,
    heads: usize,
    causal: bool,
) -> Result<Tensor> {
    let (rows, three_width) = qkv.dims2()?;
    let (tokens, width) = (rows / batch.max(1), three_width / 3);
    if batch == 0 || heads == 0 || rows % batch != 0 || three_width % 3 != 0 || width % heads != 0 {
        candle_core::bail!("attention: {rows}×{three_width} values for {batch} × {heads} heads");
    }
    let split = qkv
        .reshape((batch, tokens, 3, heads, width / heads))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?;
    let (q, k, v) = (split.get(0)?, split.get(1)?, split.get(2)?);
    let mut scores = q.matmul(&k.t()?)?;
    if causal {
        let mask: Vec<f32> = (0..tokens * tokens)
            .map(|i| {
                if i % tokens > i / tokens {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (tokens, tokens), qkv.device())?.to_dtype(qkv.dtype())?;
        scores = scores.broadcast_add(&mask)?;
    }
    candle_nn::ops::softmax_last_dim(&scores)?
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((rows, width))
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn attention_equals_the_reference_on_both_paths() {
        // Small (one thread) and large (rayon over heads) work, causal or not.
        for (batch, tokens, width, heads) in [(1, 5, 48, 4), (1, 77, 128, 2), (6, 50, 96, 3)] {
            let qkv = Tensor::randn(0f32, 1.0, (batch * tokens, 3 * width), &Device::Cpu).unwrap();
            for causal in [false, true] {
                let ours = attention(&qkv, batch, heads, causal).unwrap();
                let expected = attention_in_candle_ops(&qkv, batch, heads, causal).unwrap();
                let diff = max_diff(&ours, &expected);
                assert!(
                    diff < 1e-5,
                    "{batch}×{tokens}×{width}/{heads} causal {causal}: {diff}"
                );
            }
        }
    }

    #[test]
    fn affine_equals_matmul_plus_bias_on_both_paths() {
        for (rows, inner, cols) in [(3, 17, 5), (200, 96, 300)] {
            let x = Tensor::randn(0f32, 1.0, (rows, inner), &Device::Cpu).unwrap();
            let w = Tensor::randn(0f32, 1.0, (inner, cols), &Device::Cpu).unwrap();
            let b = Tensor::randn(0f32, 1.0, cols, &Device::Cpu).unwrap();
            let expected = x.matmul(&w).unwrap().broadcast_add(&b).unwrap();
            let diff = max_diff(&affine(&x, &w, &b).unwrap(), &expected);
            assert!(diff < 1e-4, "{rows}×{inner}×{cols}: {diff}");
        }
    }

    #[test]
    fn quick_gelu_equals_its_definition_on_both_paths() {
        for len in [1000, 400_000] {
            let x = Tensor::randn(0f32, 3.0, len, &Device::Cpu).unwrap();
            let expected = (&x * candle_nn::ops::sigmoid(&(&x * 1.702).unwrap()).unwrap()).unwrap();
            let diff = max_diff(&quick_gelu(&x).unwrap(), &expected);
            assert!(diff < 1e-5, "{len}: {diff}");
        }
    }

    /// Normal values from a fixed seed: a tolerance check on rounded arithmetic must not depend
    /// on the luck of the draw.
    fn seeded_normal(shape: (usize, usize), std: f32, seed: u64) -> Tensor {
        use rand::SeedableRng;
        use rand_distr::Distribution;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let normal = rand_distr::Normal::new(0f32, std).unwrap();
        let values = (0..shape.0 * shape.1)
            .map(|_| normal.sample(&mut rng))
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    /// What a GPU runs (candle's ops in bf16), checked against the f32 kernels on the CPU.
    #[test]
    fn bf16_takes_candle_ops_and_stays_close_to_the_f32_kernels() {
        let (batch, tokens, width, heads) = (2, 9, 64, 4);
        // The model scales queries by 1/sqrt(head width) before attention, so scores are of
        // order one, as here: q ~ N(0, 1/16), k, v ~ N(0, 1).
        let q = seeded_normal((batch * tokens, width), 0.25, 1);
        let kv = seeded_normal((batch * tokens, 2 * width), 1.0, 2);
        let qkv = Tensor::cat(&[&q, &kv], 1).unwrap();
        let w = seeded_normal((width, width), 0.2, 3);
        let b = seeded_normal((1, width), 1.0, 4).squeeze(0).unwrap();
        let half = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let back = |t: Tensor| t.to_dtype(DType::F32).unwrap();
        for causal in [false, true] {
            let low = back(attention(&half(&qkv), batch, heads, causal).unwrap());
            let full = attention(&qkv, batch, heads, causal).unwrap();
            assert!(max_diff(&low, &full) < 0.05, "causal {causal}");
        }
        let x = kv.narrow(1, 0, width).unwrap();
        let low = back(affine(&half(&x), &half(&w), &half(&b)).unwrap());
        assert!(max_diff(&low, &affine(&x, &w, &b).unwrap()) < 0.1);
        let low = back(quick_gelu(&half(&x)).unwrap());
        assert!(max_diff(&low, &quick_gelu(&x).unwrap()) < 0.05);
    }

    #[test]
    fn mismatched_shapes_are_errors_not_out_of_bounds_reads() {
        let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::zeros((4, 5), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap();
        assert!(affine(&x, &w, &b).is_err());
        let qkv = Tensor::zeros((4, 10), DType::F32, &Device::Cpu).unwrap();
        assert!(attention(&qkv, 1, 2, false).is_err());
    }
}
