//! Health of a queue's background tasks, as plain data.
//!
//! The runtime (pump, retention, lease rescue) and the webhook dispatcher
//! run in background tasks. A panic in one of them must never leave jobs
//! silently stuck: the task is restarted and the panic is counted here, so a
//! health call (and a server's `/health`) can say what happened. These types
//! live in core so every layer reports in one shape without depending on the
//! others.

/// The state of one background task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskState {
    /// Running normally.
    Running,
    /// Panicked and is being (or was) restarted; see [`TaskHealth::panics`].
    Restarting,
    /// Stopped by shutdown.
    Stopped,
    /// Ended for good without being told to stop (it panicked too often, or
    /// its restart failed): the queue is unhealthy.
    Failed,
}

impl TaskState {
    /// The state's name as health reports show it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }
}

/// How one background task is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskHealth {
    /// Its name, e.g. `"pump"`, `"retention"`, `"webhook-dispatcher"`.
    pub name: String,
    /// Its state.
    pub state: TaskState,
    /// How many times it panicked (and was restarted) since the queue started.
    pub panics: u32,
    /// The message of its last panic, if it panicked.
    pub last_panic: Option<String>,
}

impl TaskHealth {
    /// A task that is running and never panicked.
    pub fn running(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            state: TaskState::Running,
            panics: 0,
            last_panic: None,
        }
    }

    /// Whether the task is doing its work (running, or stopped by shutdown).
    pub fn is_ok(&self) -> bool {
        matches!(self.state, TaskState::Running | TaskState::Stopped)
    }
}

/// How a queue is doing: every background task's health.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// One entry per background task.
    pub tasks: Vec<TaskHealth>,
}

impl Health {
    /// Health made of these tasks.
    pub fn new(tasks: Vec<TaskHealth>) -> Self {
        Self { tasks }
    }

    /// Whether every task is doing its work.
    pub fn is_healthy(&self) -> bool {
        self.tasks.iter().all(TaskHealth::is_ok)
    }
}

/// The text of a panic payload (`panic!("...")` gives `&str` or `String`).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_only_when_every_task_is_ok() {
        let mut h = Health::new(vec![TaskHealth::running("pump")]);
        assert!(h.is_healthy());
        h.tasks.push(TaskHealth {
            state: TaskState::Failed,
            ..TaskHealth::running("retention")
        });
        assert!(!h.is_healthy());
    }

    #[test]
    fn panic_messages() {
        let r = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(&*r), "boom 1");
    }
}
