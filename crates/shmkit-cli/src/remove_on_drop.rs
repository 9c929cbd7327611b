//! A segment name that goes away with the command that created it.

use shmkit::Location;

/// Removes a segment's name on every exit path of the command that created
/// it: success, error, Ctrl-C (the demo's and the benchmark's segments).
pub struct RemoveOnDrop(pub Location);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Err(err) = shmkit::segment::remove(&self.0) {
            eprintln!("shmkit: could not remove the segment {:?}: {err}", self.0);
        }
    }
}
