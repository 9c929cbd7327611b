//! Whether a process maps the object behind an address of ours: the second
//! test a lock waiter applies to a live owner pid, so that a pid reused by an
//! unrelated process (or one a stray write put in a lock word) does not hold
//! a lock forever. Read from `/proc/PID/maps`, on the slow path only.

/// The backing object of a mapping: device (as `/proc/PID/maps` prints it,
/// `major:minor` in hex) and inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MappedObject {
    device: String,
    inode: u64,
}

/// The object behind the mapping of this process that contains `addr`, or
/// `None` for anonymous memory (inode 0) or when `/proc` cannot say.
pub(crate) fn object_at(addr: usize) -> Option<MappedObject> {
    try_object_at(addr).ok().flatten()
}

/// The object behind the mapping of this process that contains `addr`;
/// `None` for private anonymous memory (inode 0: no other process can map
/// it) or an address mapped nowhere.
pub(crate) fn try_object_at(addr: usize) -> std::io::Result<Option<MappedObject>> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    Ok(maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        if !(start..end).contains(&addr) {
            return None;
        }
        let device = fields.nth(2)?.to_owned();
        let inode = fields.next()?.parse::<u64>().ok()?;
        (inode != 0).then_some(MappedObject { device, inode })
    }))
}

/// Whether process `pid` maps `object`: `Some(false)` only when its maps
/// were read and the object is not there; `None` when they cannot be read
/// (another user's process, say), which the caller must treat as "maybe".
pub(crate) fn process_maps(pid: u32, object: &MappedObject) -> Option<bool> {
    let mut maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    if maps.is_empty() {
        // A live process always maps something; empty maps under its pid
        // mean its main thread exited (a zombie) while others may run, and
        // a live thread's own entry shows the process's maps.
        maps = live_thread_maps(pid).unwrap_or_default();
    }
    Some(maps.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(3);
        fields.next() == Some(object.device.as_str())
            && fields.next().and_then(|i| i.parse::<u64>().ok()) == Some(object.inode)
    }))
}

/// The maps of process `pid` as one of its live threads shows them.
fn live_thread_maps(pid: u32) -> Option<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(|task| {
            let task = task.ok()?.file_name();
            std::fs::read_to_string(format!("/proc/{pid}/task/{}/maps", task.to_str()?)).ok()
        })
        .find(|maps| !maps.is_empty())
}

/// The other processes that map `object`, as far as this user may read
/// their maps (processes whose maps cannot be read are left out).
pub(crate) fn other_processes_mapping(object: &MappedObject) -> std::io::Result<Vec<u32>> {
    let me = std::process::id();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != me && process_maps(pid, object) == Some(true) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// The processes that hold a lock on `object`, from `/proc/locks` (one
/// entry per lock, waiters included; readable by every user whatever
/// `hidepid` says). Pid 0 stands for a holder outside this pid namespace.
pub(crate) fn processes_locking(object: &MappedObject) -> std::io::Result<Vec<u32>> {
    Ok(holders_in_locks(
        &std::fs::read_to_string("/proc/locks")?,
        object,
    ))
}

/// Parses `/proc/locks` lines such as
/// `1: FLOCK  ADVISORY  READ  4242 00:1a:123 0 EOF` (a waiter's line has
/// `->` after the number).
fn holders_in_locks(locks: &str, object: &MappedObject) -> Vec<u32> {
    locks
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().filter(|field| *field != "->");
            let pid = fields.nth(4)?.parse::<u32>().ok()?;
            let (device, inode) = fields.next()?.rsplit_once(':')?;
            (device == object.device && inode.parse::<u64>().ok()? == object.inode).then_some(pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_object_is_found_in_its_mappers_and_not_elsewhere() {
        let segment =
            crate::Segment::create(&crate::SegmentOptions::memfd("mapped-by").size(1 << 16))
                .unwrap();
        let object = object_at(segment.base().as_ptr() as usize).expect("a memfd has an inode");
        assert_eq!(process_maps(std::process::id(), &object), Some(true));
        // Our parent (the test runner) does not map our memfd.
        // SAFETY: no preconditions.
        let parent = unsafe { libc::getppid() } as u32;
        assert_eq!(process_maps(parent, &object), Some(false));
        // Heap memory is anonymous: nothing to compare.
        let on_heap = Box::new(0u64);
        assert_eq!(object_at(&*on_heap as *const u64 as usize), None);
    }

    #[test]
    fn lock_holders_are_read_from_proc_locks_lines() {
        let object = MappedObject {
            device: "00:1a".to_owned(),
            inode: 123,
        };
        let locks = "1: FLOCK  ADVISORY  READ  4242 00:1a:123 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 4343 00:1a:123 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 99 00:1a:1234 0 EOF\n\
                     3: FLOCK  ADVISORY  READ  0 00:1a:123 0 EOF\n\
                     4: OFDLCK ADVISORY  READ  -1 08:01:123 0 EOF\n";
        assert_eq!(holders_in_locks(locks, &object), vec![4242, 4343, 0]);
    }

    #[test]
    fn every_open_segment_is_listed_in_proc_locks_under_its_users_pid() {
        let name = format!("/shmkit-locks-{}", std::process::id());
        let _ = crate::segment::remove(&crate::Location::Shm(name.clone()));
        let segment =
            crate::Segment::create(&crate::SegmentOptions::shm(&name).size(1 << 16)).unwrap();
        let object = object_at(segment.base().as_ptr() as usize).expect("shm has an inode");
        let me = std::process::id();
        assert_eq!(processes_locking(&object).unwrap(), vec![me]);
        let attached = crate::Segment::attach(&crate::SegmentOptions::shm(&name)).unwrap();
        assert_eq!(processes_locking(&object).unwrap(), vec![me, me]);
        drop(attached);
        segment.unlink().unwrap();
        drop(segment);
        assert_eq!(processes_locking(&object).unwrap(), Vec::<u32>::new());
    }
}
