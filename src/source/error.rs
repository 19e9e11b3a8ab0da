//! Why a write was refused.

/// Why a write, or one message of a batch, was refused. Nothing of it was appended,
/// except with [`WriteError::DurabilityUnknown`].
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The request as a whole breaks a rule (a batch of no message or too many).
    #[error("{0}")]
    Malformed(String),
    /// The message breaks a rule of the namespace.
    #[error("{0}")]
    Invalid(String),
    #[error("a message payload is larger than the namespace's limit of {0} bytes")]
    TooLarge(u64),
    #[error("the payload does not satisfy the namespace's schema")]
    SchemaViolation(Vec<super::schema::Violation>),
    #[error("idempotency key `{0}` was used with another body")]
    KeyConflict(String),
    #[error("a write with idempotency key `{0}` is in progress; retry later")]
    KeyInProgress(String),
    #[error("namespace `{0}` has too many writes waiting for durability; retry later")]
    Overloaded(String),
    #[error("namespace `{namespace}` is over its rate limit; retry after {retry_after} s")]
    RateLimited { namespace: String, retry_after: u64 },
    /// The namespace did not open, its log failed, or its keys are unavailable.
    #[error("namespace `{0}` cannot take writes now; retry later")]
    Unavailable(String),
    #[error("the backend of namespace `{namespace}` is unreachable; retry later ({reason})")]
    BackendUnavailable { namespace: String, reason: String },
    #[error("the disk of namespace `{0}` is full; retry later")]
    StorageFull(String),
    #[error("the backend did not confirm the write; it may or may not be durable ({0})")]
    DurabilityUnknown(String),
    /// A bug: the append's task ended without an answer.
    #[error("an internal error")]
    Internal,
}
