//! Memory: what this process holds (read from /proc on Linux) and the budget a person gives it.

use std::path::Path;

use serde::{Deserialize, Serialize};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// What the process holds, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessMemory {
    /// Resident now: anonymous memory plus the pages of mapped files.
    pub resident: u64,
    /// Anonymous memory (heap, stacks): what the kernel cannot take back without swap.
    pub anonymous: u64,
    /// Resident pages of memory-mapped files (the index's files): clean ones are dropped by the
    /// kernel under pressure and read again when needed.
    pub file: u64,
    /// The most that was resident at once since the process started.
    pub peak: u64,
}

impl ProcessMemory {
    /// This process now; `None` where the system does not say (not Linux).
    pub fn now() -> Option<Self> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kilobytes = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| {
                    value
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .map(|kb| kb * 1024)
        };
        Some(Self {
            resident: kilobytes("VmRSS:")?,
            anonymous: kilobytes("RssAnon:").unwrap_or_default(),
            file: kilobytes("RssFile:").unwrap_or_default()
                + kilobytes("RssShmem:").unwrap_or_default(),
            peak: kilobytes("VmHWM:")?,
        })
    }
}

/// What a Glimpse process last said of its memory, kept in the data directory for `glimpse
/// status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRecord {
    /// Which command: `glimpse serve`, `glimpse index`.
    pub process: String,
    /// Its process id.
    pub pid: u32,
    /// When, in seconds since the epoch.
    pub at: i64,
    /// The budget it ran under.
    pub budget: MemoryBudget,
    /// What it held.
    pub memory: ProcessMemory,
}

const RECORD_FILE: &str = "memory.json";

impl MemoryRecord {
    /// This process now (all zeros where the system does not say).
    pub fn now(process: &str, budget: MemoryBudget, at: i64) -> Self {
        Self {
            process: process.to_owned(),
            pid: std::process::id(),
            at,
            budget,
            memory: ProcessMemory::now().unwrap_or_default(),
        }
    }

    /// Writes it to `data_dir` (whole or not at all).
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let temporary = data_dir.join(format!("{RECORD_FILE}.partial"));
        std::fs::write(&temporary, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&temporary, data_dir.join(RECORD_FILE))
    }

    /// The last record in `data_dir`, if there is a readable one.
    pub fn load(data_dir: &Path) -> Option<Self> {
        let text = std::fs::read(data_dir.join(RECORD_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// One line for people: `glimpse serve (pid 12): 612 MB resident of a 2 GB budget (peak
    /// 1.1 GB)`.
    pub fn summary(&self) -> String {
        let over = if self.memory.peak > self.budget.bytes() {
            " — over budget"
        } else {
            ""
        };
        format!(
            "{} (pid {}): {} resident of a {} budget (peak {}{over})",
            self.process,
            self.pid,
            megabytes(self.memory.resident),
            self.budget,
            megabytes(self.memory.peak),
        )
    }
}

/// How much memory Glimpse may use: the index is built in slices and its segments kept to sizes
/// whose building fits, and what a process holds is reported against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MemoryBudget {
    bytes: u64,
}

/// Why a memory budget was not understood.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// Not a size.
    #[error("{0:?} is not a size: write it like 2GB, 1.5GB or 800MB")]
    NotASize(String),
    /// Too small to hold the model and a useful index.
    #[error("{0} is too small: Glimpse needs at least {min}", min = MemoryBudget::MIN)]
    TooSmall(MemoryBudget),
}

impl MemoryBudget {
    /// The least Glimpse runs in: the two towers of a ViT-B/32 CLIP model take about 600 MB.
    pub const MIN: Self = Self { bytes: 768 * MIB };
    /// The default, sized for a small machine (a NAS with 4 GB shared with everything else).
    pub const DEFAULT: Self = Self { bytes: 2 * GIB };

    /// The budget in bytes.
    pub fn bytes(self) -> u64 {
        self.bytes
    }

    /// A budget of `bytes` (at least [`Self::MIN`]).
    pub fn new(bytes: u64) -> Result<Self, BudgetError> {
        let budget = Self { bytes };
        if budget < Self::MIN {
            return Err(BudgetError::TooSmall(budget));
        }
        Ok(budget)
    }
}

impl Default for MemoryBudget {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl std::str::FromStr for MemoryBudget {
    type Err = BudgetError;

    /// Sizes as people write them: `2GB`, `2 GiB`, `1.5g`, `800MB`, `800M`. Units are binary
    /// (a GB is 1024 MB), as memory is sold.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let not_a_size = || BudgetError::NotASize(text.to_owned());
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let number: f64 = number.parse().map_err(|_| not_a_size())?;
        let unit = match unit.trim().to_ascii_lowercase().as_str() {
            "g" | "gb" | "gib" => GIB,
            "m" | "mb" | "mib" => MIB,
            _ => return Err(not_a_size()),
        };
        // Whole megabytes, so that the budget reads back exactly as it is written.
        let megabytes = (number * (unit / MIB) as f64).round();
        if !megabytes.is_finite() || megabytes >= (u64::MAX / MIB) as f64 {
            return Err(not_a_size());
        }
        Self::new(megabytes as u64 * MIB)
    }
}

impl std::fmt::Display for MemoryBudget {
    /// Exactly: `2 GB`, `1.5 GB`, `900 MB` (it is saved this way and read back).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = self.bytes;
        if bytes.is_multiple_of(GIB) {
            write!(f, "{} GB", bytes / GIB)
        } else if let Some(tenths) = bytes.checked_mul(10).filter(|b| b.is_multiple_of(GIB)) {
            write!(f, "{}.{} GB", bytes / GIB, tenths / GIB % 10)
        } else {
            write!(f, "{} MB", bytes / MIB)
        }
    }
}

impl TryFrom<String> for MemoryBudget {
    type Error = BudgetError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<MemoryBudget> for String {
    fn from(budget: MemoryBudget) -> Self {
        budget.to_string()
    }
}

/// A size for people: `768 MB`, `1.5 GB`.
pub fn megabytes(bytes: u64) -> String {
    if bytes >= GIB {
        let gigabytes = bytes as f64 / GIB as f64;
        format!("{} GB", (gigabytes * 10.0).round() / 10.0)
    } else {
        format!("{} MB", bytes.div_ceil(MIB))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sizes_as_people_write_them() {
        let sizes = [
            ("2GB", 2 * GIB),
            ("2 GiB", 2 * GIB),
            ("1.5g", 3 * GIB / 2),
            ("800MB", 800 * MIB),
            ("800m", 800 * MIB),
        ];
        for (text, bytes) in sizes {
            assert_eq!(
                text.parse::<MemoryBudget>().unwrap().bytes(),
                bytes,
                "{text}"
            );
        }
        assert_eq!(MemoryBudget::DEFAULT.to_string(), "2 GB");
        assert_eq!(
            "1.5GB".parse::<MemoryBudget>().unwrap().to_string(),
            "1.5 GB"
        );
        assert_eq!(
            "900M".parse::<MemoryBudget>().unwrap().to_string(),
            "900 MB"
        );
        for text in ["2GB", "1.5GB", "1500MB", "1.3GB", "0.9 GB", "9999999999GB"] {
            let budget: MemoryBudget = text.parse().unwrap();
            let saved = serde_json::to_value(budget).unwrap();
            let read_back: MemoryBudget = serde_json::from_value(saved).unwrap();
            assert_eq!(read_back, budget, "{text} reads back as written");
        }
    }

    #[test]
    fn refuses_what_is_not_a_size_or_too_small_with_a_way_out() {
        for text in ["", "lots", "2TB", "GB", "-1GB", "1e999GB"] {
            let error = text.parse::<MemoryBudget>().unwrap_err();
            assert!(
                error.to_string().contains("write it like 2GB"),
                "{text}: {error}"
            );
        }
        let error = "100MB".parse::<MemoryBudget>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "100 MB is too small: Glimpse needs at least 768 MB"
        );
    }

    #[test]
    fn keeps_the_last_record_for_status() {
        let directory = tempfile::tempdir().unwrap();
        assert_eq!(MemoryRecord::load(directory.path()), None);
        let mut record = MemoryRecord::now("glimpse serve", MemoryBudget::DEFAULT, 1_700_000_000);
        record.memory = ProcessMemory {
            resident: 600 * MIB,
            anonymous: 500 * MIB,
            file: 100 * MIB,
            peak: 3 * GIB,
        };
        record.save(directory.path()).unwrap();
        let loaded = MemoryRecord::load(directory.path()).unwrap();
        assert_eq!(loaded, record);
        assert_eq!(
            loaded.summary(),
            format!(
                "glimpse serve (pid {}): 600 MB resident of a 2 GB budget (peak 3 GB — over \
                 budget)",
                std::process::id()
            )
        );
    }

    #[test]
    fn reads_this_process() {
        if cfg!(target_os = "linux") {
            let memory = ProcessMemory::now().unwrap();
            assert!(memory.resident > 0 && memory.peak >= memory.resident);
        }
    }
}
