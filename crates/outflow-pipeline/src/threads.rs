//! How many threads the binaries' runtime gets.

use std::num::NonZeroUsize;

/// The default number of runtime worker threads for a process that runs `pipelines`
/// pipelines: one per pipeline, at least one, at most one per CPU.
///
/// A pipeline is a chain (source, runner, sink) whose stages hand batches to each
/// other; on one thread a hand-off is a queue push, across threads it is a wake-up of the
/// other thread. With two threads for one pipeline, outflow spent 27–31 % more CPU per
/// event into NATS JetStream and made 20 to 40 times as many context switches, without
/// draining faster (docs/benchmarks.md, round 8). A Postgres pipeline's walsender, one
/// process per slot, costs more per event than outflow's whole pipeline on one thread, so
/// the thread keeps up with it.
pub fn default_worker_threads(pipelines: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    pipelines.clamp(1, cpus.max(1))
}

/// The worker threads for `pipelines` pipelines: `chosen` (the `--worker-threads` flag or
/// `OUTFLOW_WORKER_THREADS`) when given, else Tokio's own `TOKIO_WORKER_THREADS` when set,
/// else [`default_worker_threads`]. An error says what to fix when `TOKIO_WORKER_THREADS`
/// is not a positive integer.
pub fn worker_threads(chosen: Option<u16>, pipelines: usize) -> Result<usize, String> {
    if let Some(n) = chosen {
        return Ok(usize::from(n).max(1));
    }
    match std::env::var("TOKIO_WORKER_THREADS") {
        Ok(text) => match text.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "TOKIO_WORKER_THREADS={text:?} is not a positive integer: set a number of \
                 threads, or unset it for one per pipeline"
            )),
        },
        Err(_) => Ok(default_worker_threads(pipelines)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_pipeline_between_one_and_the_cpus() {
        let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        assert_eq!(default_worker_threads(0), 1);
        assert_eq!(default_worker_threads(1), 1);
        assert_eq!(default_worker_threads(cpus), cpus);
        assert_eq!(default_worker_threads(cpus + 5), cpus);
        if cpus >= 2 {
            assert_eq!(default_worker_threads(2), 2);
        }
    }

    #[test]
    fn a_chosen_number_wins() {
        assert_eq!(worker_threads(Some(7), 1), Ok(7));
    }
}
