//! Integer arguments as Python passes them: of any size, checked here so
//! that a value out of range is a `ValueError` that names the argument,
//! never an `OverflowError` about C types.

use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::prelude::*;

/// A non-negative integer below 2**64 (an offset, a size, a count).
#[inline]
pub fn unsigned(value: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
    match value.extract::<u64>() {
        Ok(value) => Ok(value),
        Err(err) if err.is_instance_of::<PyOverflowError>(value.py()) => {
            let negative = value.lt(0).unwrap_or(false);
            Err(PyValueError::new_err(if negative {
                format!("{what} must not be negative, not {value}")
            } else {
                format!("{what} {value} is too large (at most 2**64 - 1)")
            }))
        }
        Err(err) => Err(err),
    }
}

/// An optional [`unsigned`] (None passes through).
#[inline]
pub fn optional(value: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<u64>> {
    match value {
        Some(value) if !value.is_none() => unsigned(value, what).map(Some),
        _ => Ok(None),
    }
}

/// A positive [`unsigned`].
pub fn positive(value: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
    match unsigned(value, what)? {
        0 => Err(PyValueError::new_err(format!(
            "{what} must be positive, not 0"
        ))),
        value => Ok(value),
    }
}
