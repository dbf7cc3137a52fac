//! `--shard I/N` of `engine infer` and `engine eval`: one of N processes
//! takes every N-th item of the full, deterministic list.

/// `--shard I/N`: the inputs at positions `I, I+N, I+2N, ...` (0-based `I`)
/// of the full, deterministic input list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

/// Parses `I/N`; the errors say what is wrong with the value (clap names
/// the flag and the value).
impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Shard, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| "not I/N (e.g. 0/4)".to_string())?;
        let index: usize = i.trim().parse().map_err(|_| format!("bad index {i:?}"))?;
        let count: usize = n.trim().parse().map_err(|_| format!("bad count {n:?}"))?;
        if count == 0 || index >= count {
            return Err(
                "needs 0 <= I < N (I is 0-based, like SLURM_ARRAY_TASK_ID with --array=0-(N-1) and JOB_COMPLETION_INDEX)"
                    .to_string(),
            );
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    pub fn select<T: Clone>(&self, items: &[T]) -> Vec<T> {
        items
            .iter()
            .skip(self.index)
            .step_by(self.count)
            .cloned()
            .collect()
    }

    /// A file name carrying the shard: `results.csv` -> `results-shard-2-of-8.csv`.
    pub fn file_name(shard: Option<Shard>, stem: &str, ext: &str) -> String {
        match shard {
            Some(s) => format!("{stem}-shard-{}-of-{}.{ext}", s.index, s.count),
            None => format!("{stem}.{ext}"),
        }
    }
}
