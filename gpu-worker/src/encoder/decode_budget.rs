//! The memory that image decoding may hold at once in this process. Each decode reserves what its
//! image needs, estimated from the header before a pixel is allocated; an image that needs more
//! than the whole budget is refused, and decodes that would overrun it wait for others to finish.
//! So a burst of large photos (or thumbnail requests) cannot exhaust the machine's memory, and a
//! photo too large to decode here fails with a reason instead of killing the process.

use std::sync::{Condvar, Mutex, OnceLock};

use super::EncoderError;

/// The budget when none is set: room for one 100-megapixel RGB photo, or several ordinary ones
/// at once.
pub const DEFAULT_DECODE_MEMORY: u64 = 1 << 30;

struct DecodeBudget {
    limit: u64,
    in_use: Mutex<u64>,
    freed: Condvar,
}

static BUDGET: OnceLock<DecodeBudget> = OnceLock::new();

fn budget() -> &'static DecodeBudget {
    BUDGET.get_or_init(|| DecodeBudget::new(DEFAULT_DECODE_MEMORY))
}

/// Sets the process's decode budget in MB (at least 1). Call it once, before the first decode;
/// returns `false` (changing nothing) when a budget is already in force.
pub fn set_decode_memory_mb(megabytes: u64) -> bool {
    BUDGET
        .set(DecodeBudget::new(megabytes.max(1).saturating_mul(1 << 20)))
        .is_ok()
}

/// What decoding an image of `pixels` pixels with `bytes_per_pixel` bytes per decoded pixel holds
/// at its peak: the decoder's own planes and output, then the 8-bit RGB copy and the oriented
/// copy made from it.
pub fn decode_cost(pixels: u64, bytes_per_pixel: u64) -> u64 {
    pixels.saturating_mul(bytes_per_pixel.saturating_mul(2).saturating_add(6))
}

/// Memory reserved for one decode; released when dropped.
pub struct Reservation {
    budget: &'static DecodeBudget,
    bytes: u64,
}

/// Reserves `bytes` for a decode of a `width`×`height` image, waiting while other decodes hold
/// too much; refuses an image that needs more than the whole budget.
pub fn reserve(bytes: u64, width: u32, height: u32) -> Result<Reservation, EncoderError> {
    budget().reserve(bytes, width, height)
}

impl DecodeBudget {
    fn new(limit: u64) -> Self {
        Self {
            limit,
            in_use: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    fn reserve(
        &'static self,
        bytes: u64,
        width: u32,
        height: u32,
    ) -> Result<Reservation, EncoderError> {
        const MB: u64 = 1 << 20;
        if bytes > self.limit {
            return Err(EncoderError::BadImage(format!(
                "decoding this {width}×{height} image needs about {} MB, more than the {} MB \
                 this process may use for decoding (--decode-memory-mb); raise it and retry the \
                 photo, or make the image smaller",
                bytes.div_ceil(MB),
                self.limit / MB
            )));
        }
        let mut in_use = self
            .in_use
            .lock()
            .map_err(|_| EncoderError::Internal("a decode panicked".into()))?;
        while *in_use + bytes > self.limit {
            in_use = self
                .freed
                .wait(in_use)
                .map_err(|_| EncoderError::Internal("a decode panicked".into()))?;
        }
        *in_use += bytes;
        Ok(Reservation {
            budget: self,
            bytes,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Ok(mut in_use) = self.budget.in_use.lock() {
            *in_use = in_use.saturating_sub(self.bytes);
        }
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_can_never_fit_and_makes_the_rest_wait_their_turn() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let budget: &'static DecodeBudget = Box::leak(Box::new(DecodeBudget::new(100)));
        assert!(matches!(
            budget.reserve(101, 10, 10),
            Err(EncoderError::BadImage(message)) if message.contains("--decode-memory-mb")
        ));
        let first = budget.reserve(60, 1, 1).unwrap();
        let first_held = AtomicBool::new(true);
        std::thread::scope(|scope| {
            let second = scope.spawn(|| {
                let _second = budget.reserve(60, 1, 1).unwrap();
                assert!(
                    !first_held.load(Ordering::SeqCst),
                    "the second decode started while the first held the memory"
                );
            });
            // Give the second decode time to reach the budget (it must wait there).
            std::thread::sleep(std::time::Duration::from_millis(50));
            first_held.store(false, Ordering::SeqCst);
            drop(first);
            second.join().unwrap();
        });
        assert_eq!(*budget.in_use.lock().unwrap(), 0);
    }
}
