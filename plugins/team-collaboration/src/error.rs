//! The one error type of team-collaboration: what a command prints, what a sync records. Each
//! variant says what failed in words a user can act on; API refusals carry the API's own reason.

/// What went wrong.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The command line is not one the command takes.
    #[error("{0}")]
    Usage(String),
    /// No valid Enterprise subscription: the plugin does nothing.
    #[error("team-collaboration needs an Enterprise subscription ({0})")]
    NotEnterprise(String),
    /// The machine has joined no team.
    #[error(
        "this machine is in no team: run `km plugin team-collaboration join TEAM --admin-key ADMIN.pub`"
    )]
    NoTeam,
    /// The API could not be reached, or is overloaded: nothing was decided.
    #[error("the Kilometers API cannot be reached: {0}")]
    Unreachable(String),
    /// km did not perform the request (no API configured, a refused path).
    #[error("km did not reach the Kilometers API: {0}")]
    Host(String),
    /// The API answered, and said no.
    #[error("the Kilometers API refused {what} (HTTP {status}): {message}")]
    Refused {
        /// What was asked.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The API's reason.
        message: String,
    },
    /// The API answered something this plugin cannot read.
    #[error("the Kilometers API's answer to {what} is not what it should be: {reason}")]
    BadAnswer {
        /// What was asked.
        what: String,
        /// What is wrong with the answer.
        reason: String,
    },
    /// A team file was refused, or could not be read or recorded.
    #[error(transparent)]
    Policy(#[from] km_policy::Error),
    /// A file of the plugin's own (its data directory, a file named on the command line).
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// km refused to write a policy file for the plugin.
    #[error("writing policy {file}: {message}")]
    WritePolicy {
        /// The file, relative to `KM_HOME/policies/`.
        file: String,
        /// km's reason.
        message: String,
    },
}

impl Error {
    /// The exit code of a command that failed with this error: 1 when the API or a check said
    /// no, 2 for usage and other errors (km's convention).
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            Error::Refused { .. } | Error::Policy(_) => 1,
            _ => 2,
        }
    }

    /// Whether the error means "try again later" rather than "no".
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable(_))
    }
}
