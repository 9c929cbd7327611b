//! Who uses a segment, and the lock that keeps a recovery pass alone.
//!
//! A recovery pass rebuilds shared structures that a running operation
//! would be changing, so it runs only while no other process uses the
//! segment, and no process attaches for writing while it runs.
//!
//! Two witnesses say who uses a segment: `/proc/locks`, where every process
//! that opened the backing object holds a shared `flock` for as long as it
//! has it open (listed whatever its user, `hidepid` or pid namespace), and
//! `/proc/PID/maps`, which finds processes that got the mapping without
//! opening the object (a forked child, a passed descriptor) as far as this
//! user may read their maps.
//!
//! The gap between the check and the pass is closed by the header's
//! `recovery` word, in a Dekker-style handshake: the recoverer publishes its
//! identity there, then asks the witnesses; an attacher takes its `flock`
//! and maps the segment, then reads the word. Whichever comes second sees
//! the other: the recoverer finds the attacher (and refuses), or the
//! attacher finds the word taken (and waits, bounded, for the pass to end).

use std::fmt;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Segment;
use crate::error::{Error, Result};
use crate::os::identity::{self, Identity, Seen};
use crate::os::mapped_by;
use crate::os::thread_id;
use crate::sync::robust_lock::DeathWatch;

/// The other users of a segment, as far as `/proc` tells.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SegmentUsers {
    /// Other processes of this pid namespace that have the segment open or
    /// mapped, sorted.
    pub pids: Vec<u32>,
    /// How many holds on the segment belong to processes in another pid
    /// namespace (a container that shares `/dev/shm`): their pids mean
    /// nothing here.
    pub outside_namespace: usize,
}

impl SegmentUsers {
    /// Whether nobody else uses the segment.
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty() && self.outside_namespace == 0
    }
}

impl fmt::Display for SegmentUsers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.pids.is_empty() {
            let pids: Vec<String> = self.pids.iter().map(u32::to_string).collect();
            parts.push(format!(
                "{} other process(es), pid {}",
                self.pids.len(),
                pids.join(", ")
            ));
        }
        if self.outside_namespace > 0 {
            parts.push(format!(
                "{} process(es) in another pid namespace",
                self.outside_namespace
            ));
        }
        if parts.is_empty() {
            return f.write_str("no other process");
        }
        f.write_str(&parts.join(" and "))
    }
}

/// Holds a segment's recovery lock: no other process uses the segment (or
/// the caller vouched that they are idle), and read-write attachers wait
/// until it is dropped. See [`Segment::lock_for_recovery`].
#[must_use = "the lock is released when dropped"]
pub struct RecoveryLock<'a> {
    word: &'a AtomicU64,
    token: u64,
}

impl fmt::Debug for RecoveryLock<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryLock")
            .field("holder", &Identity::unpack(self.token).tid)
            .finish()
    }
}

impl Drop for RecoveryLock<'_> {
    fn drop(&mut self) {
        let _ = self
            .word
            .compare_exchange(self.token, 0, Ordering::Release, Ordering::Relaxed);
    }
}

/// Whether process `pid` has certainly exited: it no longer exists, or it
/// is a zombie, every thread of it exited. A process whose main thread
/// exited while others run shows a zombie main thread (and empty maps), so
/// each thread is looked at; anything `/proc` does not show (another
/// user's process under `hidepid`) counts as alive.
fn certainly_exited(pid: u32) -> bool {
    if !super::process_alive(pid) {
        return true;
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut threads = 0;
    for task in tasks {
        let Some(tid) = task
            .ok()
            .and_then(|task| task.file_name().to_str()?.parse::<u32>().ok())
        else {
            return false;
        };
        threads += 1;
        if !matches!(identity::look(tid), Seen::Zombie | Seen::Gone) {
            return false;
        }
    }
    threads > 0
}

impl Segment {
    /// The other processes that use this segment: those that hold it open
    /// (from `/proc/locks`, whoever they run as) and those that map it
    /// (from `/proc/PID/maps`, where this user may read them). Objects are
    /// matched by device and inode, so an object removed and made again
    /// under the same name is not mistaken for this one. Memory that no
    /// other process can map (a caller's private buffer) has no users.
    pub fn users(&self) -> Result<SegmentUsers> {
        let io = |source| Error::Io {
            context: "listing the processes that use the segment in /proc".to_owned(),
            source,
        };
        let Some(object) = mapped_by::try_object_at(self.base().as_ptr() as usize).map_err(io)?
        else {
            return Ok(SegmentUsers::default());
        };
        let me = std::process::id();
        let mut users = SegmentUsers::default();
        if self.fd().is_some() {
            for pid in mapped_by::processes_locking(&object).map_err(io)? {
                match pid {
                    0 => users.outside_namespace += 1,
                    // A lock names the process that took it, but belongs to
                    // the open file, which a forked child inherits: once
                    // that process has exited (even unreaped), whoever
                    // still holds the file maps the segment and is found
                    // below.
                    pid if pid != me && !certainly_exited(pid) => users.pids.push(pid),
                    _ => {}
                }
            }
        }
        users
            .pids
            .extend(mapped_by::other_processes_mapping(&object).map_err(io)?);
        users.pids.sort_unstable();
        users.pids.dedup();
        Ok(users)
    }

    /// The pids of [`users`](Self::users) in this pid namespace.
    pub fn other_processes(&self) -> Result<Vec<u32>> {
        Ok(self.users()?.pids)
    }

    /// Takes the segment's recovery lock, for a recovery pass
    /// ([`ShmAllocator::recover`](crate::alloc::ShmAllocator::recover) takes
    /// it itself). Refuses with [`Error::InUse`] while another live thread
    /// holds it, and, unless `force`, while [`users`](Self::users) finds
    /// any other process. `force` is for processes known to be idle; the
    /// lock is still taken, so no process attaches for writing meanwhile.
    ///
    /// Threads of this process are the caller's to stop. What cannot be
    /// seen: a process that got the mapping from this one (a forked child,
    /// a passed descriptor) and whose maps this user may not read.
    pub fn lock_for_recovery(&self, force: bool) -> Result<RecoveryLock<'_>> {
        let word = &self.header().recovery;
        let mut token = thread_id::current_identity_word();
        let mut watch = DeathWatch::new(word as *const AtomicU64 as usize).judging_at_once();
        let mut holder = 0;
        while let Err(found) =
            word.compare_exchange(holder, token, Ordering::AcqRel, Ordering::Acquire)
        {
            if found == token {
                if thread_id::forget_if_inherited() {
                    token = thread_id::current_identity_word();
                    continue;
                }
                return Err(Error::Unsupported(
                    "this thread already holds the segment's recovery lock",
                ));
            }
            if found != 0 && !watch.is_dead(Identity::unpack(found)) {
                return Err(Error::InUse {
                    reason: format!("{} runs a recovery pass", describe(found)),
                });
            }
            // Free, or held by a dead recoverer: take it from there.
            holder = found;
        }
        let lock = RecoveryLock { word, token };
        // Publish the word before asking who maps the segment (see the
        // module docs).
        fence(Ordering::SeqCst);
        if !force {
            let users = self.users()?;
            if !users.is_empty() {
                return Err(Error::InUse {
                    reason: format!(
                        "used by {users}: stop them first, or force the recovery if they are idle"
                    ),
                });
            }
        }
        Ok(lock)
    }

    /// Waits (at most the attach timeout) while another thread runs a
    /// recovery pass: called by read-write attachers once they are listed
    /// as users.
    pub(crate) fn wait_out_recovery(&self) -> Result<()> {
        let word = &self.header().recovery;
        // Pairs with the recoverer's fence: our `flock` and mapping come
        // before this read.
        fence(Ordering::SeqCst);
        let started = Instant::now();
        let mut watch = DeathWatch::new(word as *const AtomicU64 as usize);
        loop {
            let holder = word.load(Ordering::Acquire);
            if holder == 0 || holder == thread_id::current_identity_word() {
                return Ok(());
            }
            if watch.is_dead(Identity::unpack(holder)) {
                // A recoverer that died mid-pass: the next one starts over.
                let _ = word.compare_exchange(holder, 0, Ordering::AcqRel, Ordering::Relaxed);
                return Ok(());
            }
            if started.elapsed() >= self.ready_timeout {
                return Err(Error::InUse {
                    reason: format!(
                        "{} still runs a recovery pass after {:?}",
                        describe(holder),
                        started.elapsed()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// "thread T of process P" for a recovery word.
fn describe(holder: u64) -> String {
    let tid = Identity::unpack(holder).tid;
    format!("thread {tid} of process {}", thread_id::process_of(tid))
}
