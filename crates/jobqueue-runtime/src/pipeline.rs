//! Pipelines: a name, an ordered list of phases, and their limits.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jobqueue_core::RetryPolicy;
use jobqueue_core::job::check_name;

use crate::phase::Phase;
use crate::typed::InputType;

/// One phase of a pipeline with its limits.
#[derive(Clone)]
pub struct PhaseSpec {
    /// The phase.
    pub phase: Arc<dyn Phase>,
    /// A run that takes longer fails (retryable).
    pub timeout: Option<Duration>,
    /// This phase's own retry policy (else the pipeline's, else the
    /// queue's); see [`PhaseOptions::retry`].
    pub retry: Option<RetryPolicy>,
}

/// Options of one phase, overriding its pipeline's; see
/// [`Pipeline::phase_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct PhaseOptions {
    /// A run that takes longer fails (retryable). The pipeline's
    /// [`attempt_timeout`](Pipeline::attempt_timeout) still applies: the
    /// earlier of the two ends the run.
    pub timeout: Option<Duration>,
    /// This phase's retry policy: after a retryable failure of this phase,
    /// the job is retried with this policy's backoff while this phase has
    /// run fewer than its `max_attempts` times (and the job has attempts
    /// left). A job's attempts are one budget for all its phases: when a
    /// job does not set its own, its budget is the largest `max_attempts`
    /// of its pipeline's policy and its phases' policies.
    pub retry: Option<RetryPolicy>,
}

impl PhaseOptions {
    /// No options: the pipeline's apply.
    pub fn new() -> Self {
        Self::default()
    }

    /// A time limit on each run of the phase.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The phase's own retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }
}

impl fmt::Debug for PhaseSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhaseSpec")
            .field("name", &self.phase.name())
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

/// A named, ordered list of phases.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub(crate) name: String,
    pub(crate) phases: Vec<PhaseSpec>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) concurrency: Option<usize>,
    /// The input type a typed pipeline declared ([`Pipeline::typed`]).
    pub(crate) input_type: Option<InputType>,
}

impl Pipeline {
    /// An empty pipeline called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            phases: Vec::new(),
            retry: None,
            attempt_timeout: None,
            concurrency: None,
            input_type: None,
        }
    }

    /// Appends a phase.
    pub fn phase(self, phase: impl Phase) -> Self {
        self.phase_with_timeout(phase, None)
    }

    /// Appends a phase that fails (retryable) when a run takes longer than `timeout`.
    pub fn phase_with_timeout(
        self,
        phase: impl Phase,
        timeout: impl Into<Option<Duration>>,
    ) -> Self {
        self.phase_with(
            phase,
            PhaseOptions {
                timeout: timeout.into(),
                retry: None,
            },
        )
    }

    /// Appends a phase with its own options (a timeout, a retry policy),
    /// which override the pipeline's.
    ///
    /// ```
    /// use std::time::Duration;
    /// use jobqueue_core::RetryPolicy;
    /// use jobqueue_runtime::{PhaseError, PhaseOptions, Pipeline, phase_fn};
    ///
    /// let upload = phase_fn("upload", |_ctx| async move {
    ///     Ok::<_, PhaseError>(serde_json::json!("s3://bucket/key"))
    /// });
    /// let pipeline = Pipeline::new("publish")
    ///     .retry(RetryPolicy { max_attempts: 2, ..RetryPolicy::default() })
    ///     .phase_with(
    ///         upload,
    ///         PhaseOptions::new()
    ///             .timeout(Duration::from_secs(60))
    ///             .retry(RetryPolicy { max_attempts: 10, ..RetryPolicy::default() }),
    ///     );
    /// # let _ = pipeline;
    /// ```
    pub fn phase_with(mut self, phase: impl Phase, options: PhaseOptions) -> Self {
        self.phases.push(PhaseSpec {
            phase: Arc::new(phase),
            timeout: options.timeout,
            retry: options.retry,
        });
        self
    }

    /// The retry policy of this pipeline's jobs (else the queue's default).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// A whole attempt that takes longer fails (retryable).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// At most `n` jobs of this pipeline run at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = Some(n);
        self
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The names of its phases, in order.
    pub fn phase_names(&self) -> Vec<String> {
        self.phases
            .iter()
            .map(|p| p.phase.name().to_owned())
            .collect()
    }

    /// Its phases with their options, in order.
    pub fn phases(&self) -> &[PhaseSpec] {
        &self.phases
    }

    /// The input type it declared, if it is typed ([`Pipeline::typed`]).
    pub fn input_type(&self) -> Option<&InputType> {
        self.input_type.as_ref()
    }

    /// Refuses an input that does not deserialize into the pipeline's
    /// declared input type (a pipeline without one takes any JSON).
    pub fn check_input(&self, input: &serde_json::Value) -> Result<(), String> {
        match &self.input_type {
            Some(t) => t.check(input).map_err(|e| {
                format!(
                    "the input of pipeline {:?} does not fit {}: {e}",
                    self.name, t.name
                )
            }),
            None => Ok(()),
        }
    }

    /// Its retry policy, if it has its own.
    pub fn retry_policy(&self) -> Option<&RetryPolicy> {
        self.retry.as_ref()
    }

    /// The attempt budget of a job of this pipeline that sets none: the
    /// largest `max_attempts` of its retry policy (else `default`) and of
    /// its phases' own policies.
    pub fn default_max_attempts(&self, default: &RetryPolicy) -> u32 {
        let own = self.retry.as_ref().unwrap_or(default).max_attempts;
        self.phases
            .iter()
            .filter_map(|p| p.retry.as_ref())
            .map(|r| r.max_attempts)
            .fold(own, u32::max)
    }

    /// Refuses what a store would refuse at every enqueue (names come from
    /// the same check, `jobqueue_core::job::check_name`), and what could
    /// never run.
    fn validate(&self) -> Result<(), String> {
        check_name("pipeline name", &self.name)?;
        if self.phases.is_empty() {
            return Err(format!("pipeline {:?} has no phases", self.name));
        }
        let names = self.phase_names();
        for (i, n) in names.iter().enumerate() {
            check_name(&format!("phase {i} name"), n)
                .map_err(|e| format!("pipeline {:?}: {e}", self.name))?;
            if names[..i].contains(n) {
                return Err(format!(
                    "pipeline {:?}: phase {n:?} appears twice",
                    self.name
                ));
            }
        }
        if let Some(policy) = &self.retry {
            policy
                .validate()
                .map_err(|e| format!("pipeline {:?}: retry: {e}", self.name))?;
        }
        for spec in &self.phases {
            if let Some(policy) = &spec.retry {
                policy.validate().map_err(|e| {
                    format!(
                        "pipeline {:?}: phase {:?}: retry: {e}",
                        self.name,
                        spec.phase.name()
                    )
                })?;
            }
        }
        if self.concurrency == Some(0) {
            return Err(format!(
                "pipeline {:?}: concurrency must be at least 1",
                self.name
            ));
        }
        Ok(())
    }
}

/// The pipelines a process knows, by name.
#[derive(Debug, Clone, Default)]
pub struct Pipelines {
    by_name: HashMap<String, Arc<Pipeline>>,
}

impl Pipelines {
    /// Builds the registry; refuses duplicate names and malformed pipelines
    /// (no name, no phases, a pipeline or phase name empty or longer than
    /// 256 bytes, a phase name twice, a concurrency cap of 0, a retry policy
    /// that fails [`RetryPolicy::validate`]).
    pub fn new(pipelines: impl IntoIterator<Item = Pipeline>) -> Result<Self, String> {
        let mut by_name = HashMap::new();
        for p in pipelines {
            p.validate()?;
            let name = p.name.clone();
            if by_name.insert(name.clone(), Arc::new(p)).is_some() {
                return Err(format!("pipeline {name:?} is defined twice"));
            }
        }
        Ok(Self { by_name })
    }

    /// The pipeline called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Pipeline>> {
        self.by_name.get(name)
    }

    /// Every pipeline.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Pipeline>> {
        self.by_name.values()
    }

    /// The names of every pipeline, sorted (a stable order keeps a
    /// store's prepared claim statement the same from one claim to the next).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.by_name.keys().cloned().collect();
        names.sort();
        names
    }
}
