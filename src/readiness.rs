//! Dispatch readiness: "participant joined" is not "agent ready".
//!
//! `Gate::dispatch` registers the job, calls the dispatch closure (its successful return marks the
//! first stage), then waits, event-driven, for each further stage to be marked within its deadline
//! (measured from the previous stage). A failing dispatch call is retried with the policy's delays,
//! within the first stage's deadline; a stage deadline raises `NotReady` naming the stuck stage, or
//! re-dispatches when `redispatch` is set.
//! Marks may come from any thread, early (before dispatch returns), out of order (a later stage
//! implies the earlier ones), twice, or late (after the job finished): none of that is an error.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::wording::count;

const LOG: &str = "tether::readiness";

#[derive(Debug, Clone)]
pub struct Spec {
    pub stages: Vec<Arc<str>>,
    /// Deadline of each stage, measured from the previous stage's arrival (the first from the start
    /// of the first dispatch call, or of the re-dispatch: it bounds the calls and their retries).
    pub timeouts: Vec<Duration>,
    pub policy: Backoff,
    /// Re-dispatch (within the policy's attempt budget) when a stage deadline passes.
    pub redispatch: bool,
}

impl Spec {
    /// Stages when none are given: the dispatch call returned, the agent joined, its entrypoint ran.
    pub const DEFAULT_STAGES: [&'static str; 3] = ["dispatched", "joined", "ready"];
    /// Deadline of a stage when none is given.
    pub const DEFAULT_STAGE_TIMEOUT: Duration = Duration::from_secs(10);

    /// Retries of a raising dispatch call when no policy is given: 200/400/800 ms, three attempts.
    pub fn default_policy() -> Backoff {
        Backoff {
            initial: 0.2,
            factor: 2.0,
            max_delay: 7.0,
            jitter: crate::backoff::Jitter::None,
            max_attempts: Some(3),
            deadline: None,
            seed: None,
        }
    }
}

#[derive(Debug)]
struct Job {
    stages: Vec<Arc<str>>,
    reached: Mutex<Vec<Option<Instant>>>,
    notify: Notify,
}

impl Job {
    fn reached(&self) -> Vec<Option<Instant>> {
        self.reached.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// The stage (and any earlier unmarked ones) is now reached.
    Advanced,
    /// Already reached: harmless.
    Duplicate,
    /// No such job in flight (never dispatched, or already finished): reported, harmless.
    UnknownJob,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct UnknownStage(pub String);

/// An error of the application's dispatch call.
pub trait DispatchError {
    /// It ends the dispatch at once instead of being retried: a cancellation or an interrupt raised in
    /// the call, which a retry would swallow.
    fn is_final(&self) -> bool {
        false
    }
}

impl DispatchError for String {}
impl DispatchError for &str {}

/// Why a job is not ready. `stage` is the first stage not reached.
#[derive(Debug)]
pub struct NotReady<E> {
    pub job_id: String,
    pub stage: String,
    pub elapsed: Duration,
    /// Reached stages with their time since dispatch start (of the last attempt).
    pub reached: Vec<(String, Duration)>,
    pub attempts: u32,
    pub message: String,
    /// The dispatch call's last error when dispatching itself failed.
    pub cause: Option<E>,
}

#[derive(Debug, Default)]
pub struct Gate {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    unknown_marks: AtomicU64,
    /// Python logger the gate's records go to (a key registered by the bindings); None: the module's
    /// `tether.readiness`. Every record carries it as the `logger` field.
    logger: Option<Arc<str>>,
    /// Set when the gate is measured (`tether.metrics`): each stage's latency is recorded.
    metrics: Option<crate::metrics::Labels>,
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s} s")
    }
}

/// Removes the job when the dispatch ends in any way (including cancellation).
struct Registration<'a> {
    gate: &'a Gate,
    job_id: String,
    job: Arc<Job>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut jobs = self.gate.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if jobs.get(&self.job_id).is_some_and(|j| Arc::ptr_eq(j, &self.job)) {
            jobs.remove(&self.job_id);
        }
    }
}

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    /// A gate named `name` in its metrics, whose records go to the Python logger registered under
    /// `logger`.
    pub fn named(name: &str, logger: Option<Arc<str>>) -> Gate {
        Gate { logger, metrics: crate::metrics::labels(&[("name", name)]), ..Gate::default() }
    }

    /// Each stage the attempt begun at `start` reached: its time since the previous one.
    fn record_stages(&self, job: &Job, start: Instant) {
        let Some(labels) = &self.metrics else { return };
        let mut prev = start;
        for (at, stage) in job.reached().into_iter().zip(&job.stages) {
            let Some(at) = at else { break };
            let took = at.saturating_duration_since(prev).as_secs_f64();
            crate::metrics::record(
                labels,
                crate::metrics::Instrument::StageDuration,
                Some(("stage", stage.to_string().into())),
                took,
            );
            prev = prev.max(at);
        }
    }

    /// Record that `job_id` reached `stage`.
    pub fn mark(&self, job_id: &str, stage: &str) -> Result<Mark, UnknownStage> {
        let job = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).get(job_id).cloned();
        let Some(job) = job else {
            self.unknown_marks.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(target: LOG, logger = self.logger.as_deref(), job_id, stage, "mark for unknown or finished job {job_id:?} ({stage}) ignored");
            return Ok(Mark::UnknownJob);
        };
        self.mark_job(job_id, &job, stage)
    }

    /// `mark` of this dispatch's own `job`: a newer dispatch of the same id may have replaced it in the
    /// gate, and its marks are not this one's.
    fn mark_job(&self, job_id: &str, job: &Job, stage: &str) -> Result<Mark, UnknownStage> {
        let Some(idx) = job.stages.iter().position(|s| &**s == stage) else {
            return Err(UnknownStage(format!(
                "unknown stage {stage:?} for job {job_id:?}; its stages are {:?}",
                job.stages.iter().map(|s| &**s).collect::<Vec<_>>()
            )));
        };
        let now = Instant::now();
        let advanced = {
            let mut r = job.reached.lock().unwrap_or_else(|p| p.into_inner());
            let mut advanced = false;
            for slot in r.iter_mut().take(idx + 1) {
                if slot.is_none() {
                    *slot = Some(now);
                    advanced = true;
                }
            }
            advanced
        };
        if advanced {
            job.notify.notify_waiters();
            tracing::debug!(target: LOG, logger = self.logger.as_deref(), job_id, stage, "job {job_id:?} reached {stage:?}");
            Ok(Mark::Advanced)
        } else {
            Ok(Mark::Duplicate)
        }
    }

    /// Jobs currently being dispatched.
    pub fn pending(&self) -> Vec<String> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    /// Stages reached so far by a job in flight.
    pub fn status(&self, job_id: &str) -> Option<Vec<(String, bool)>> {
        let job = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).get(job_id).cloned()?;
        let r = job.reached();
        Some(job.stages.iter().zip(r).map(|(s, at)| (s.to_string(), at.is_some())).collect())
    }

    pub fn unknown_marks(&self) -> u64 {
        self.unknown_marks.load(Ordering::Relaxed)
    }

    /// Dispatch `job_id` and wait until every stage was reached. Returns each stage's time since the
    /// start of the successful attempt's dispatch call.
    pub async fn dispatch<E, F, Fut>(
        &self,
        job_id: &str,
        spec: &Spec,
        mut dispatch: F,
        describe: impl Fn(&E) -> String,
    ) -> Result<Vec<(String, Duration)>, NotReady<E>>
    where
        E: DispatchError,
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let job = Arc::new(Job {
            stages: spec.stages.clone(),
            reached: Mutex::new(vec![None; spec.stages.len()]),
            notify: Notify::new(),
        });
        {
            let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            if jobs.contains_key(job_id) {
                tracing::warn!(target: LOG, logger = self.logger.as_deref(), job_id, "job {job_id:?} is already being dispatched; the newer dispatch replaces it");
            }
            jobs.insert(job_id.to_string(), job.clone());
        }
        let _reg = Registration { gate: self, job_id: job_id.to_string(), job: job.clone() };
        let mut delays = spec.policy.delays();
        let mut attempt = 0u32;
        let first = spec.stages.first().map(|s| s.to_string()).unwrap_or_default();
        let first_limit = spec.timeouts[0];
        // the first stage's deadline, from the first dispatch call (or the re-dispatch) that began the
        // current round: it bounds the calls and their retries, so a policy without max_attempts ends too
        let mut first_deadline: Option<Instant> = None;

        loop {
            attempt += 1;
            if attempt > 1 {
                // marks made during (or after) a failed attempt belong to it, not to this one
                *job.reached.lock().unwrap_or_else(|p| p.into_inner()) = vec![None; spec.stages.len()];
            }
            let start = Instant::now();
            let not_ready =
                |stage: &str, reached: Vec<(String, Duration)>, message: String, cause: Option<E>| NotReady {
                    job_id: job_id.to_string(),
                    stage: stage.to_string(),
                    elapsed: start.elapsed(),
                    reached,
                    attempts: attempt,
                    message,
                    cause,
                };
            // 1. the dispatch call, bounded by the first stage's deadline
            let deadline = *first_deadline.get_or_insert(start + first_limit);
            let outcome = tokio::time::timeout_at(deadline, dispatch(attempt)).await;
            let failure: Option<(String, Option<E>)> = match outcome {
                Ok(Ok(())) => {
                    let _ = self.mark_job(job_id, &job, &first);
                    None
                }
                Ok(Err(e)) if e.is_final() => {
                    let message = format!("job {job_id:?} was never {first}: dispatch failed: {}", describe(&e));
                    return Err(not_ready(&first, vec![], message, Some(e)));
                }
                Ok(Err(e)) => Some((format!("dispatch failed: {}", describe(&e)), Some(e))),
                Err(_) => Some(("dispatch call did not return".to_string(), None)),
            };
            if let Some((why, cause)) = failure {
                let next = delays.next();
                let out_of_time = Instant::now() + next.unwrap_or_default() >= deadline;
                match next {
                    Some(d) if !out_of_time => {
                        tracing::warn!(target: LOG, logger = self.logger.as_deref(), job_id, stage = %first, attempt, delay_ms = d.as_secs_f64() * 1000.0,
                            "job {job_id:?}: {why}; retrying dispatch in {}", ms(d));
                        tokio::time::sleep(d).await;
                        continue;
                    }
                    _ => {
                        let within = if out_of_time { format!(" within {}", secs(first_limit)) } else { String::new() };
                        let message = format!(
                            "job {job_id:?} was never {first}{within}: {why} (after {})",
                            count(attempt, "attempt")
                        );
                        // NotReady is this failure's report: the caller awaits it, so a log record at
                        // WARNING or above would print the same failure twice
                        tracing::debug!(target: LOG, logger = self.logger.as_deref(), job_id, stage = %first, attempts = attempt, "{message}");
                        return Err(not_ready(&first, vec![], message, cause));
                    }
                }
            }

            // 2. wait for each further stage, each within its deadline from the previous one
            let mut stuck: Option<(usize, Instant)> = None;
            for idx in 1..spec.stages.len() {
                let prev_at = job.reached()[idx - 1].unwrap_or(start);
                let deadline = prev_at + spec.timeouts[idx];
                loop {
                    let n = job.notify.notified();
                    tokio::pin!(n);
                    n.as_mut().enable();
                    if job.reached()[idx].is_some() {
                        break;
                    }
                    if tokio::time::timeout_at(deadline, n).await.is_err() && job.reached()[idx].is_none() {
                        stuck = Some((idx, prev_at));
                        break;
                    }
                }
                if stuck.is_some() {
                    break;
                }
            }
            self.record_stages(&job, start);
            let reached: Vec<(String, Duration)> = job
                .reached()
                .iter()
                .zip(&spec.stages)
                .filter_map(|(at, s)| at.map(|t| (s.to_string(), t.saturating_duration_since(start))))
                .collect();
            let Some((idx, _prev_at)) = stuck else {
                tracing::debug!(target: LOG, logger = self.logger.as_deref(), job_id, attempts = attempt, "job {job_id:?} ready after {}", ms(start.elapsed()));
                return Ok(reached);
            };
            let stage = &spec.stages[idx];
            let prev = &spec.stages[idx - 1];
            let prev_after = reached.iter().find(|(s, _)| s == &**prev).map(|(_, d)| *d).unwrap_or_default();
            let why = format!(
                "job {job_id:?} {prev} after {} but never {stage} within {}",
                ms(prev_after),
                secs(spec.timeouts[idx])
            );
            if spec.redispatch {
                if let Some(d) = delays.next() {
                    tracing::warn!(target: LOG, logger = self.logger.as_deref(), job_id, stage = &**stage, attempt, delay_ms = d.as_secs_f64() * 1000.0,
                        "{why}; re-dispatching in {}", ms(d));
                    tokio::time::sleep(d).await;
                    first_deadline = None;
                    continue;
                }
            }
            let message = if attempt > 1 { format!("{why} (after {attempt} dispatch attempts)") } else { why };
            // reported by the NotReady the caller awaits, as above
            tracing::debug!(target: LOG, logger = self.logger.as_deref(), job_id, stage = &**stage, attempts = attempt, elapsed_ms = start.elapsed().as_secs_f64() * 1000.0, "{message}");
            return Err(not_ready(stage, reached, message, None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Jitter;
    use std::sync::atomic::AtomicU32;

    fn spec(redispatch: bool) -> Spec {
        Spec {
            stages: vec!["dispatched".into(), "joined".into(), "ready".into()],
            timeouts: vec![Duration::from_secs(5), Duration::from_secs(10), Duration::from_secs(10)],
            policy: Backoff {
                initial: 0.2,
                factor: 2.0,
                jitter: Jitter::None,
                max_attempts: Some(3),
                ..Default::default()
            },
            redispatch,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn marks_of_a_failed_attempt_do_not_carry_over() {
        let gate = Arc::new(Gate::new());
        let g = gate.clone();
        let res = gate
            .dispatch(
                "j1",
                &spec(false),
                |attempt| {
                    let g = g.clone();
                    async move {
                        if attempt == 1 {
                            g.mark("j1", "ready").unwrap(); // then the dispatch call fails
                            return Err("boom");
                        }
                        Ok(())
                    }
                },
                |e: &&str| e.to_string(),
            )
            .await;
        let nr = res.expect_err("the retry reached nothing of its own");
        assert_eq!(nr.stage, "joined");
        assert_eq!(nr.attempts, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn joined_but_never_ready_names_the_stage() {
        let gate = Arc::new(Gate::new());
        let g = gate.clone();
        let res = gate
            .dispatch(
                "j1",
                &spec(false),
                |_| {
                    let g = g.clone();
                    async move {
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(245)).await;
                            g.mark("j1", "joined").unwrap();
                        });
                        Ok::<(), String>(())
                    }
                },
                |e| e.clone(),
            )
            .await;
        let nr = res.unwrap_err();
        assert_eq!(nr.stage, "ready");
        assert_eq!(nr.message, "job \"j1\" joined after 245 ms but never ready within 10 s");
        assert_eq!(nr.reached.len(), 2);
        assert!(gate.pending().is_empty(), "finished jobs are forgotten");
        assert_eq!(gate.mark("j1", "ready"), Ok(Mark::UnknownJob), "late marks are harmless");
    }

    #[tokio::test(start_paused = true)]
    async fn happy_path_with_early_out_of_order_and_duplicate_marks() {
        let gate = Arc::new(Gate::new());
        let g = gate.clone();
        let timings = gate
            .dispatch(
                "j2",
                &spec(false),
                |_| {
                    let g = g.clone();
                    async move {
                        // marks before the dispatch call returns are kept
                        assert_eq!(g.mark("j2", "ready"), Ok(Mark::Advanced));
                        assert_eq!(g.mark("j2", "joined"), Ok(Mark::Duplicate));
                        Ok::<(), String>(())
                    }
                },
                |e| e.clone(),
            )
            .await
            .unwrap();
        assert_eq!(timings.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["dispatched", "joined", "ready"]);
    }

    #[tokio::test(start_paused = true)]
    async fn failing_dispatch_retries_with_backoff_then_gives_up() {
        let gate = Gate::new();
        let calls = AtomicU32::new(0);
        let t0 = Instant::now();
        let nr = gate
            .dispatch(
                "j3",
                &spec(false),
                |_| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Err::<(), _>("503 from the dispatch API".to_string()) }
                },
                |e| e.clone(),
            )
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(t0.elapsed(), Duration::from_millis(200 + 400 + 800));
        assert_eq!(nr.stage, "dispatched");
        assert_eq!(nr.cause.as_deref(), Some("503 from the dispatch API"));
        assert!(nr.message.contains("after 4 attempts"), "{}", nr.message);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_of_a_failing_dispatch_end_at_the_first_stages_deadline() {
        let gate = Gate::new();
        let calls = AtomicU32::new(0);
        let t0 = Instant::now();
        let mut sp = spec(false);
        sp.policy.max_attempts = None; // retries for ever: 0.2, 0.4, 0.8, 1.6, 3.2 s ...
        let nr = gate
            .dispatch(
                "j7",
                &sp,
                |_| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Err::<(), _>("no agent named \"typo\"".to_string()) }
                },
                |e| e.clone(),
            )
            .await
            .unwrap_err();
        // calls at 0, 0.2, 0.6, 1.4 and 3 s; the next, at 6.2 s, would be past the 5 s of "dispatched"
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        assert_eq!(t0.elapsed(), Duration::from_secs(3));
        assert_eq!(nr.stage, "dispatched");
        assert_eq!(
            nr.message,
            "job \"j7\" was never dispatched within 5 s: dispatch failed: no agent named \"typo\" (after 5 attempts)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn redispatch_on_stage_timeout() {
        let gate = Arc::new(Gate::new());
        let g = gate.clone();
        let res = gate
            .dispatch(
                "j4",
                &spec(true),
                |attempt| {
                    let g = g.clone();
                    async move {
                        if attempt == 2 {
                            g.mark("j4", "ready").unwrap();
                        }
                        Ok::<(), String>(())
                    }
                },
                |e| e.clone(),
            )
            .await;
        assert!(res.is_ok(), "{res:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_stage_is_an_error_and_unknown_job_is_counted() {
        let gate = Arc::new(Gate::new());
        assert_eq!(gate.mark("nobody", "ready"), Ok(Mark::UnknownJob));
        assert_eq!(gate.unknown_marks(), 1);
        let g = gate.clone();
        let _ = gate
            .dispatch(
                "j5",
                &spec(false),
                |_| {
                    let g = g.clone();
                    async move {
                        assert!(g.mark("j5", "bogus").is_err());
                        g.mark("j5", "ready").unwrap();
                        Ok::<(), String>(())
                    }
                },
                |e| e.clone(),
            )
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_forgets_the_job() {
        let gate = Gate::new();
        let sp = spec(false);
        let fut = gate.dispatch("j6", &sp, |_| async { Ok::<(), String>(()) }, |e| e.clone());
        let _ = tokio::time::timeout(Duration::from_secs(1), fut).await;
        assert!(gate.pending().is_empty());
    }
}
