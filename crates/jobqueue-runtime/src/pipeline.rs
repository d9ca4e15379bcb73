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
}

impl fmt::Debug for PhaseSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhaseSpec")
            .field("name", &self.phase.name())
            .field("timeout", &self.timeout)
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
        mut self,
        phase: impl Phase,
        timeout: impl Into<Option<Duration>>,
    ) -> Self {
        self.phases.push(PhaseSpec {
            phase: Arc::new(phase),
            timeout: timeout.into(),
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
