//! The slot threads of `gpt2q serve`: each runs the library's [`gpt2q::slots::run_job`] for the
//! jobs the scheduler hands it, counting them in the server's metrics.

use gpt2q::session::Session;
use gpt2q::slots::{run_job, Scheduler};

use super::metrics::Metrics;

/// A slot's loop: takes jobs for ever, running each on `session` on a worker of the thread pool
/// (where the parallel matrix products allocate nothing).
pub fn run_slot(index: usize, mut session: Session<'_>, scheduler: &Scheduler, metrics: &Metrics) {
    loop {
        let (job, mut cached) = scheduler.next(index);
        if job.is_cancelled() {
            // The client left while the job waited in the queue.
            scheduler.done(index, cached);
            job.finish(Err("cancelled".into()));
            continue;
        }
        metrics.slot_started();
        let result = rayon::scope(|_| run_job(&mut session, &job, &mut cached));
        match &result {
            Ok(finish) => metrics.job_finished(finish),
            Err(_) => cached.clear(),
        }
        metrics.slot_stopped();
        // The slot is idle before its client hears that the job is done: a client that sends
        // its next turn at once finds the slot (and the conversation in its cache) free.
        scheduler.done(index, cached);
        job.finish(result.map_err(|e| e.to_string()));
    }
}
