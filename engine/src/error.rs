//! Error types of the domain core. Each variant names what was wrong and, where it applies,
//! the field and the limit it broke, so callers can show it to an operator unchanged.

use thiserror::Error;

/// A value failed validation: `field` names the offending field, `reason` says what would be valid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {field}: {reason}")]
pub struct ValidationError {
    pub field: String,
    pub reason: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
