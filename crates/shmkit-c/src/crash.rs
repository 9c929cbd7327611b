//! `shmkit_test_crash_at` (only with the `crash-points` feature, and not in
//! the public header): the next thread of this process that reaches the
//! named point inside an allocator operation sends the process SIGKILL.

use std::ffi::c_char;

use crate::heap::text;
use crate::status::{guard, shmkit_status};

/// Arms the crash point `point` (a name such as
/// "free_list.alloc.committed").
///
/// # Safety
///
/// `point` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn shmkit_test_crash_at(point: *const c_char) -> shmkit_status {
    guard(|| {
        let name: &'static str = text(point, "point")?.to_owned().leak();
        shmkit::crash_point::arm(name);
        Ok(())
    })
}
