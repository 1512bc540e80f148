//! The process exit codes, and which errors map to which.

/// How the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Did what was asked (including a graceful stop on the first signal).
    Success,
    /// A runtime failure, e.g. Redis unreachable at start-up.
    Failure,
    /// Bad command line, environment or config file.
    Usage,
    /// The queue's state is lost (a flushed Redis, one restarted without its
    /// data, another Redis) or damaged (a destroyed group, a counter that is
    /// not a number): the process stopped rather than repair by guessing.
    QueueState,
    /// A second Ctrl-C/SIGTERM: stopped at once.
    Interrupted,
}

impl ExitStatus {
    /// The numeric code.
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Failure => 1,
            Self::Usage => 2,
            Self::QueueState => 3,
            Self::Interrupted => 130,
        }
    }
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(status: ExitStatus) -> Self {
        Self::from(status.code())
    }
}

#[cfg(test)]
mod tests {
    use super::ExitStatus;

    #[test]
    fn codes() {
        assert_eq!(ExitStatus::Success.code(), 0);
        assert_eq!(ExitStatus::Failure.code(), 1);
        assert_eq!(ExitStatus::Usage.code(), 2);
        assert_eq!(ExitStatus::QueueState.code(), 3);
        assert_eq!(ExitStatus::Interrupted.code(), 130);
    }
}
