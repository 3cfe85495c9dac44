//! CPU kernels for the transformer blocks, as candle custom ops.
//!
//! candle runs every op on its thread pool once it is large enough, and wakes the pool for every
//! matrix product. For the few-token products of a text query that wake-up costs more than the
//! product itself. These kernels decide per call: one thread for small work, the rayon pool for
//! large work. Inference only: they have no backward pass.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Multiply-adds below which a product runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 256 << 10;

fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else {
        candle_core::bail!("{what}: expected f32 values");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
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
        // SAFETY: `out` is rows × cols, `x` rows × inner and `w` inner × cols, all row-major and
        // contiguous (checked above); the strides below describe exactly those buffers, and
        // `out` is not aliased by `x` or `w`.
        #[allow(unsafe_code)]
        unsafe {
            gemm::gemm(
                rows,
                cols,
                inner,
                out.as_mut_ptr(),
                1,
                cols as isize,
                true,
                x.as_ptr(),
                1,
                inner as isize,
                w.as_ptr(),
                1,
                cols as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, cols))))
    }
}

/// `x · w + b`; `w` is `(in, out)` and contiguous, `b` is `(out)`.
pub fn affine(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3_no_bwd(w, b, &Affine)
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
            heads.par_iter().map(attend).collect()
        } else {
            heads.iter().map(attend).collect()
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
fn attend_head(qkv: &[f32], shape: &HeadShape) -> Vec<f32> {
    let HeadShape {
        tokens,
        width,
        head_dim,
        causal,
    } = *shape;
    let row_stride = (3 * width) as isize;
    let needed = (tokens - 1) * 3 * width + 2 * width + head_dim;
    assert!(qkv.len() >= needed, "attention block out of bounds");
    let (q, k, v) = (
        qkv.as_ptr(),
        qkv[width..].as_ptr(),
        qkv[2 * width..].as_ptr(),
    );
    let mut scores = vec![0f32; tokens * tokens];
    // SAFETY: q and k are tokens × head_dim blocks inside `qkv` (bounds asserted above) with row
    // stride 3·width; k is read transposed (column j = token j). `scores` is tokens × tokens,
    // contiguous, and aliases neither.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            tokens,
            tokens,
            head_dim,
            scores.as_mut_ptr(),
            1,
            tokens as isize,
            false,
            q,
            1,
            row_stride,
            k,
            row_stride,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
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
    let mut context = vec![0f32; tokens * head_dim];
    // SAFETY: `scores` is tokens × tokens contiguous; v is a tokens × head_dim block inside `qkv`
    // (bounds asserted above) with row stride 3·width; `context` is tokens × head_dim,
    // contiguous, and aliases neither.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            tokens,
            head_dim,
            tokens,
            context.as_mut_ptr(),
            1,
            head_dim as isize,
            false,
            scores.as_ptr(),
            1,
            tokens as isize,
            v,
            1,
            row_stride,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    context
}

/// Attention over `qkv`: `(batch · tokens, 3 · width)`, q already scaled; returns
/// `(batch · tokens, width)` with heads side by side, ready for the output projection.
pub fn attention(qkv: &Tensor, batch: usize, heads: usize, causal: bool) -> Result<Tensor> {
    qkv.contiguous()?.apply_op1_no_bwd(&Attention {
        batch,
        heads,
        causal,
    })
}
