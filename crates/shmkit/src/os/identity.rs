//! Who holds a lock: a kernel thread id together with that thread's start
//! time, packed in 64 bits.
//!
//! A thread id alone names no one for long: the kernel hands it out again
//! once its thread is gone (a pool that respawns a worker after an OOM kill
//! can get the dead worker's pid back within seconds), and the new holder
//! of the id may well map the same segment. The start time (field 22 of
//! `/proc/TID/stat`, clock ticks since boot) tells the two apart, so a lock
//! whose owner id now names a thread started at another time is judged
//! dead, as is one whose owner is gone or a zombie. A forked child's thread
//! has an id of its own, so a child never mistakes its parent's lock for
//! its own.
//!
//! Assumed: the threads that share a segment share a pid namespace (ids
//! from another namespace name other threads here), and `/proc` is mounted;
//! where it is not, or hides another user's threads, judgement falls back
//! to `kill(tid, 0)` (see [`DeathWatch`](crate::sync::robust_lock::DeathWatch)).
//! Start times count clock ticks (10 ms at the usual 100 Hz): a thread
//! that dies within the tick it started in, and whose id the kernel hands
//! out again within that same tick, cannot be told from its successor
//! (with pids handed out in turn, that takes a forced `ns_last_pid`).

/// Bits of a packed identity that hold the thread id (Linux ids are below
/// `PID_MAX_LIMIT`, 2^22, on 64-bit systems).
pub(crate) const TID_BITS: u32 = 22;
const TID_MASK: u64 = (1 << TID_BITS) - 1;
/// Bits that hold the start time: 2^42 ticks at 100 Hz is 1,394 years.
const START_MASK: u64 = (1 << (64 - TID_BITS)) - 1;

/// A thread: its kernel id and its start time (0: unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub tid: u32,
    pub start: u64,
}

impl Identity {
    /// The identity in one word: never 0 for a real thread (ids start at 1).
    #[inline]
    pub(crate) fn pack(self) -> u64 {
        ((self.start & START_MASK) << TID_BITS) | (u64::from(self.tid) & TID_MASK)
    }

    #[inline]
    pub(crate) fn unpack(word: u64) -> Identity {
        Identity {
            tid: (word & TID_MASK) as u32,
            start: word >> TID_BITS,
        }
    }

    /// The identity recorded beside a 32-bit owner word (`recorded`,
    /// packed), when it names that word's owner `tid`; otherwise only the
    /// id is known (the owner died, or is still about to record itself).
    #[inline]
    pub(crate) fn of_owner(tid: u32, recorded: u64) -> Identity {
        let identity = Identity::unpack(recorded);
        if identity.tid == tid {
            identity
        } else {
            Identity { tid, start: 0 }
        }
    }
}

/// What `/proc` says of a thread id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// No such thread.
    Gone,
    /// It has exited and awaits its parent's `wait` (or is being reaped).
    Zombie,
    /// A running (or sleeping, stopped...) thread started at `start`.
    Live { start: u64 },
    /// `/proc` cannot say (not mounted, or hidden from this user).
    Unknown,
}

/// Reads `/proc/TID/stat` (a thread's own entry; `/proc/TID` resolves any
/// thread id, listed or not).
pub(crate) fn look(tid: u32) -> Seen {
    if tid == 0 {
        return Seen::Gone;
    }
    match std::fs::read(format!("/proc/{tid}/stat")) {
        Ok(stat) => parse_stat(&stat).unwrap_or(Seen::Unknown),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            // Either the thread is gone or `/proc` is not mounted.
            if std::path::Path::new("/proc/self/stat").exists() {
                Seen::Gone
            } else {
                Seen::Unknown
            }
        }
        Err(_) => Seen::Unknown,
    }
}

/// The state and start time in a `stat` line: `pid (comm) S ... starttime`,
/// where `comm` may hold spaces and parentheses, so fields are counted from
/// the last `)`.
fn parse_stat(stat: &[u8]) -> Option<Seen> {
    let close = stat.iter().rposition(|&byte| byte == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    // Field 3 is the state; field 22, the start time, is 19 further on.
    let start: u64 = fields.nth(18)?.parse().ok()?;
    Some(match state {
        "Z" | "X" | "x" => Seen::Zombie,
        _ => Seen::Live {
            start: start & START_MASK,
        },
    })
}

/// The calling thread's start time, read once per thread.
pub(crate) fn own_start() -> u64 {
    match std::fs::read("/proc/thread-self/stat")
        .ok()
        .and_then(|stat| parse_stat(&stat))
    {
        Some(Seen::Live { start }) => start,
        _ => 0,
    }
}

/// Whether the thread `identity` names is certainly dead: its id is gone
/// or a zombie, or (its start time known) now names a thread started at
/// another time. `None` when `/proc` cannot say.
pub(crate) fn is_dead(identity: Identity) -> Option<bool> {
    match look(identity.tid) {
        Seen::Gone | Seen::Zombie => Some(true),
        Seen::Live { start } if identity.start != 0 => Some(start != identity.start),
        // Alive, but without a recorded start this may be a reused id.
        Seen::Live { .. } => None,
        Seen::Unknown => None,
    }
}

/// Whether the thread a packed identity names has died: its id is gone or
/// a zombie, or now names a thread started at another time. Without
/// `/proc` (or a start time), by whether the id still answers `kill(id, 0)`.
pub(crate) fn thread_is_dead(packed: u64) -> bool {
    let identity = Identity::unpack(packed);
    is_dead(identity).unwrap_or_else(|| !super::process::process_alive(identity.tid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_pack_and_unpack() {
        let identity = Identity {
            tid: 4_194_303,
            start: 123_456_789,
        };
        assert_eq!(Identity::unpack(identity.pack()), identity);
        assert_ne!(identity.pack(), 0);
        assert_eq!(Identity::of_owner(4_194_303, identity.pack()), identity);
        assert_eq!(Identity::of_owner(7, identity.pack()).start, 0);
    }

    #[test]
    fn stat_lines_parse_whatever_the_command_name() {
        let line =
            b"4242 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 777 19 20\n";
        assert_eq!(parse_stat(line), Some(Seen::Live { start: 777 }));
        let zombie = b"4242 (x) Z 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 777 19 20\n";
        assert_eq!(parse_stat(zombie), Some(Seen::Zombie));
        assert_eq!(parse_stat(b"garbage"), None);
    }

    #[test]
    fn this_thread_is_alive_and_an_exited_one_is_dead() {
        let me = crate::os::thread_id::current_identity();
        assert_ne!(me.start, 0, "/proc gives this thread's start time");
        assert_eq!(is_dead(me), Some(false));
        // The same id with another start time: a reused id.
        let reused = Identity {
            start: me.start + 1,
            ..me
        };
        assert_eq!(is_dead(reused), Some(true));
        let gone = crate::os::thread_id::testing::dead_tid();
        assert_eq!(
            is_dead(Identity {
                tid: gone,
                start: 0
            }),
            Some(true)
        );
    }

    #[test]
    fn an_unreaped_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Wait until it has exited but leave it unreaped: a zombie.
        let started = std::time::Instant::now();
        while look(pid) != Seen::Zombie {
            assert!(started.elapsed().as_secs() < 10, "child {pid} never exited");
            std::thread::yield_now();
        }
        assert!(
            crate::os::process::process_alive(pid),
            "kill(pid, 0) still answers"
        );
        assert_eq!(is_dead(Identity { tid: pid, start: 0 }), Some(true));
        child.wait().unwrap();
    }
}
