use tonic::{Code, Status};

/// How a command failed, which decides the exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad input, or the store refused the request (exit 1).
    Rejected(String),
    /// The store could not be reached or did not answer (exit 2).
    Unreachable(String),
}

impl Failure {
    pub fn rejected(msg: impl Into<String>) -> Failure {
        Failure::Rejected(msg.into())
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Failure {
        match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                Failure::Unreachable(format!("the policy store did not answer: {}", s.message()))
            }
            _ => Failure::Rejected(s.message().to_string()),
        }
    }
}

impl From<dnsfence_api::ApiError> for Failure {
    fn from(e: dnsfence_api::ApiError) -> Failure {
        Failure::Unreachable(format!("cannot reach the policy store: {e}"))
    }
}
