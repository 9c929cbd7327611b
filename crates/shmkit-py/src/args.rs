//! Arguments as Python passes them: integers of any size, checked here so
//! that a value out of range is a `ValueError` that names the argument,
//! never an `OverflowError` about C types; flags taken by truth value.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyInt;

/// A non-negative integer below 2**64 (an offset, a size, a count). What
/// the object's `__index__` raises passes through unchanged.
#[inline]
pub fn unsigned(value: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
    if let Ok(int) = value.cast::<PyInt>() {
        if let Ok(value) = int.extract::<u64>() {
            return Ok(value);
        }
        return Err(out_of_range(int, what));
    }
    // SAFETY: `value` is a live object; the result is a new reference to
    // an int, or null with the object's own exception set.
    let index = unsafe { pyo3::ffi::PyNumber_Index(value.as_ptr()) };
    // SAFETY: as above.
    let index = unsafe { Bound::from_owned_ptr_or_err(value.py(), index) }?;
    let index = index.cast_into::<PyInt>()?;
    index
        .extract::<u64>()
        .map_err(|_| out_of_range(&index, what))
}

/// The error for an int outside `0..2**64`, told by its sign alone (no
/// comparison that a subclass could override runs).
fn out_of_range(int: &Bound<'_, PyInt>, what: &str) -> PyErr {
    let mut overflow = 0;
    // SAFETY: `int` is an int; the call sets `overflow` to its sign when it
    // does not fit a `long long`, and does not fail for an int.
    let small = unsafe { pyo3::ffi::PyLong_AsLongLongAndOverflow(int.as_ptr(), &mut overflow) };
    let negative = overflow < 0 || (overflow == 0 && small < 0);
    PyValueError::new_err(if negative {
        format!("{what} must not be negative, not {int}")
    } else {
        format!("{what} {int} is too large (at most 2**64 - 1)")
    })
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

/// A flag taken by its truth value, as `shared_allocator` takes `create`
/// (`create=0` attaches).
pub struct Truthy(pub bool);

impl<'a, 'py> FromPyObject<'a, 'py> for Truthy {
    type Error = PyErr;

    fn extract(value: Borrowed<'a, 'py, PyAny>) -> PyResult<Truthy> {
        value.is_truthy().map(Truthy)
    }
}
