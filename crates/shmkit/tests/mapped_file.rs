//! Memory-mapped files: the three modes, bounds, flushing, advice, locking,
//! and a read-write mapping shared with a second process.

mod common;

use std::path::Path;

use common::{child_env, fresh_file, spawn_self};
use shmkit::local::mapped_file::{Advice, MappedFile, Mode};
use shmkit::Error;

const PAGE: usize = 4096;

/// A file of `len` bytes holding a pattern, written without mapping it.
fn write_pattern(path: &Path, len: usize) -> Vec<u8> {
    let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

#[test]
fn read_write_changes_reach_the_file() {
    let (path, _cleanup) = fresh_file("mapped-rw");
    let mut file = MappedFile::create(&path, 3 * PAGE as u64).unwrap();
    assert_eq!(file.mode(), Mode::ReadWrite);
    assert_eq!(file.len(), 3 * PAGE);
    assert_eq!(file.path(), path);
    assert_eq!(file.read_vec(0, 3 * PAGE).unwrap(), vec![0; 3 * PAGE]);

    file.write_bytes(PAGE - 2, b"across a page").unwrap();
    file.write(2 * PAGE + 1, 0x0123_4567_89ab_cdef_u64).unwrap();
    file.flush().unwrap();
    drop(file);

    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(on_disk.len(), 3 * PAGE);
    assert_eq!(&on_disk[PAGE - 2..PAGE + 11], b"across a page");
    assert_eq!(
        on_disk[2 * PAGE + 1..2 * PAGE + 9],
        0x0123_4567_89ab_cdef_u64.to_ne_bytes()
    );

    let reopened = MappedFile::open(&path, Mode::ReadWrite).unwrap();
    assert_eq!(reopened.read_vec(PAGE - 2, 13).unwrap(), b"across a page");
    assert_eq!(
        reopened.read::<u64>(2 * PAGE + 1).unwrap(),
        0x0123_4567_89ab_cdef
    );
}

#[test]
fn a_second_process_sees_writes_and_its_writes_come_back() {
    let (path, _cleanup) = fresh_file("mapped-shared");
    let mut file = MappedFile::create(&path, 2 * PAGE as u64).unwrap();
    file.write_bytes(0, b"from the parent").unwrap();
    file.write(PAGE, 0xa11ce_u64).unwrap();

    // No flush: both mappings share the page cache.
    let output = spawn_self(
        "mapped_file_child_process",
        &[("SHMKIT_TEST_MAPPED_FILE", path.display().to_string())],
    )
    .output()
    .expect("run the child process");
    assert_child_passed(&output);

    // The child's writes show in this process's mapping, made before them.
    assert_eq!(file.read_vec(100, 14).unwrap(), b"from the child");
    assert_eq!(file.read::<u64>(PAGE + 8).unwrap(), 0xa11ce + 1);
}

/// Run by `a_second_process_sees_writes_and_its_writes_come_back` in a child
/// process.
#[test]
#[ignore = "runs only as a child of another test"]
fn mapped_file_child_process() {
    let path = child_env("SHMKIT_TEST_MAPPED_FILE");
    let mut file = MappedFile::open(&path, Mode::ReadWrite).unwrap();
    assert_eq!(file.read_vec(0, 15).unwrap(), b"from the parent");
    let seen = file.read::<u64>(PAGE).unwrap();
    assert_eq!(seen, 0xa11ce);
    file.write_bytes(100, b"from the child").unwrap();
    file.write(PAGE + 8, seen + 1).unwrap();
}

#[test]
fn copy_on_write_changes_stay_private() {
    let (path, _cleanup) = fresh_file("mapped-cow");
    let original = write_pattern(&path, 2 * PAGE);
    let mut private = MappedFile::open(&path, Mode::CopyOnWrite).unwrap();
    let shared = MappedFile::open(&path, Mode::ReadOnly).unwrap();

    private.write_bytes(10, b"private").unwrap();
    private.write(PAGE + 3, u32::MAX).unwrap();
    assert_eq!(private.read_vec(10, 7).unwrap(), b"private");
    assert_eq!(private.read::<u32>(PAGE + 3).unwrap(), u32::MAX);

    // Flushing would suggest the changes were saved: refused.
    for result in [
        private.flush(),
        private.flush_async(),
        private.flush_range(0, PAGE),
        private.flush_async_range(0, PAGE),
    ] {
        assert!(matches!(result, Err(Error::Unsupported(_))), "{result:?}");
    }
    drop(private);

    assert_eq!(shared.read_vec(0, 2 * PAGE).unwrap(), original);
    assert_eq!(std::fs::read(&path).unwrap(), original);
}

#[test]
fn read_only_mapping_refuses_writes() {
    let (path, _cleanup) = fresh_file("mapped-ro");
    let original = write_pattern(&path, PAGE);
    let mut file = MappedFile::open(&path, Mode::ReadOnly).unwrap();
    assert_eq!(file.mode(), Mode::ReadOnly);

    let err = file.write_bytes(0, b"no").unwrap_err();
    assert!(matches!(&err, Error::ReadOnlyMapping { path: p } if *p == path));
    assert!(err.to_string().contains("read-only"), "{err}");
    assert!(matches!(
        file.write(8, 1u64),
        Err(Error::ReadOnlyMapping { .. })
    ));
    assert!(matches!(
        file.as_mut_ptr(),
        Err(Error::ReadOnlyMapping { .. })
    ));
    // SAFETY: nothing else maps or writes this fresh file.
    assert!(matches!(
        unsafe { file.as_mut_slice() },
        Err(Error::ReadOnlyMapping { .. })
    ));

    // Reading works, flushing has nothing to do, and nothing changed.
    assert_eq!(file.read_vec(0, PAGE).unwrap(), original);
    file.flush().unwrap();
    // SAFETY: nothing else maps or writes this fresh file.
    assert_eq!(unsafe { file.as_slice() }, &original[..]);
    assert_eq!(std::fs::read(&path).unwrap(), original);
}

#[test]
fn out_of_range_is_an_error_and_touches_nothing() {
    let (path, _cleanup) = fresh_file("mapped-bounds");
    let mut file = MappedFile::create(&path, PAGE as u64 + 10).unwrap();
    let len = file.len();

    let out_of_bounds = |result: Result<(), Error>| {
        assert!(
            matches!(result, Err(Error::OutOfBounds { .. })),
            "{result:?}"
        )
    };
    out_of_bounds(file.read_bytes(len - 3, &mut [0; 4]));
    out_of_bounds(file.read_bytes(usize::MAX, &mut [0; 2]));
    out_of_bounds(file.read_vec(len + 1, 0).map(drop));
    out_of_bounds(file.read_vec(0, usize::MAX).map(drop));
    out_of_bounds(file.read::<u64>(len - 7).map(drop));
    out_of_bounds(file.write_bytes(len, b"x"));
    out_of_bounds(file.write(len - 1, 0u16));
    out_of_bounds(file.flush_range(len - 1, 2));
    out_of_bounds(file.flush_async_range(len + PAGE, 0));
    // Each part is in bounds alone, together they are not: checked whole.
    out_of_bounds(file.advise_range(Advice::WillNeed, PAGE, PAGE));

    let err = file.read::<u32>(len).unwrap_err();
    assert!(
        matches!(err, Error::OutOfBounds { offset, len: 4, size } if offset == len as u64 && size == len as u64),
        "{err}"
    );

    // The last bytes and empty ranges at the end are in bounds.
    file.write(len - 2, 0xbeef_u16).unwrap();
    assert_eq!(file.read::<u16>(len - 2).unwrap(), 0xbeef);
    file.read_bytes(len, &mut []).unwrap();
    file.flush_range(len, 0).unwrap();
    assert_eq!(std::fs::read(&path).unwrap()[..len - 2], vec![0; len - 2]);
}

#[test]
fn values_round_trip_at_unaligned_offsets() {
    let (path, _cleanup) = fresh_file("mapped-typed");
    let mut file = MappedFile::create(&path, PAGE as u64).unwrap();
    file.write(1, 0x1122_3344_u32).unwrap();
    file.write(7, -5_i64).unwrap();
    file.write(101, [1.5_f64, -2.25]).unwrap();
    file.write(PAGE - 16, u128::MAX - 1).unwrap();
    assert_eq!(file.read::<u32>(1).unwrap(), 0x1122_3344);
    assert_eq!(file.read::<i64>(7).unwrap(), -5);
    assert_eq!(file.read::<[f64; 2]>(101).unwrap(), [1.5, -2.25]);
    assert_eq!(file.read::<u128>(PAGE - 16).unwrap(), u128::MAX - 1);
    assert_eq!(file.read_vec(1, 4).unwrap(), 0x1122_3344_u32.to_ne_bytes());
}

#[test]
fn every_flush_writes_to_the_file() {
    let (path, _cleanup) = fresh_file("mapped-flush");
    let mut file = MappedFile::create(&path, 4 * PAGE as u64).unwrap();
    file.write_bytes(5, b"whole").unwrap();
    file.flush().unwrap();
    file.write_bytes(PAGE + 3, b"range").unwrap();
    // An unaligned range: the page that holds it is written.
    file.flush_range(PAGE + 3, 5).unwrap();
    file.write_bytes(2 * PAGE, b"async").unwrap();
    file.flush_async().unwrap();
    file.write_bytes(3 * PAGE + 100, b"async range").unwrap();
    file.flush_async_range(3 * PAGE + 100, 11).unwrap();
    // Waits for the asynchronous ones as well.
    file.flush().unwrap();
    drop(file);

    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(&on_disk[5..10], b"whole");
    assert_eq!(&on_disk[PAGE + 3..PAGE + 8], b"range");
    assert_eq!(&on_disk[2 * PAGE..2 * PAGE + 5], b"async");
    assert_eq!(&on_disk[3 * PAGE + 100..3 * PAGE + 111], b"async range");
}

#[test]
fn advice_is_taken_and_changes_no_byte() {
    let (path, _cleanup) = fresh_file("mapped-advice");
    let original = write_pattern(&path, 8 * PAGE + 123);
    for mode in [Mode::ReadOnly, Mode::ReadWrite, Mode::CopyOnWrite] {
        let file = MappedFile::open(&path, mode).unwrap();
        file.advise(Advice::Sequential).unwrap();
        file.advise(Advice::Random).unwrap();
        file.advise_range(Advice::WillNeed, PAGE + 17, 3 * PAGE)
            .unwrap();
        file.advise_range(Advice::Normal, 0, file.len()).unwrap();
        assert_eq!(file.read_vec(0, file.len()).unwrap(), original, "{mode:?}");
    }
}

#[test]
fn lock_succeeds_or_names_the_limit() {
    let (path, _cleanup) = fresh_file("mapped-lock");
    write_pattern(&path, 2 * PAGE);
    let file = MappedFile::open(&path, Mode::ReadOnly).unwrap();
    match file.lock() {
        Ok(()) => file.unlock().unwrap(),
        Err(Error::LockLimit { requested, .. }) => assert_eq!(requested, 2 * PAGE as u64),
        Err(other) => panic!("neither locked nor the documented error: {other}"),
    }
}

#[test]
fn lock_past_a_lowered_limit_is_lock_limit() {
    // Lowering the limit would hit every test of this binary: a child does it.
    let output = spawn_self("mapped_file_lock_limit_child", &[])
        .output()
        .expect("run the child process");
    assert_child_passed(&output);
}

/// Gives up `CAP_IPC_LOCK` (which would lift the limit), so the limit applies
/// whether the tests run as root or not.
fn drop_ipc_lock_capability() {
    const CAP_IPC_LOCK: u32 = 14;
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: `header` and the two `data` words are what version 3 of
    // `capget` reads and writes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut Header,
            data.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "capget: {}", std::io::Error::last_os_error());
    data[0].effective &= !(1 << CAP_IPC_LOCK);
    data[0].permitted &= !(1 << CAP_IPC_LOCK);
    // SAFETY: as above; dropping a capability is always allowed.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
}

fn set_memlock_limit(bytes: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid `struct rlimit` for both calls.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit), 0);
        limit.rlim_cur = bytes;
        assert_eq!(libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit), 0);
    }
}

/// Run by `lock_past_a_lowered_limit_is_lock_limit` in a child process.
#[test]
#[ignore = "runs only as a child of another test"]
fn mapped_file_lock_limit_child() {
    drop_ipc_lock_capability();
    let (path, _cleanup) = fresh_file("mapped-lock-limit");
    write_pattern(&path, 64 * PAGE);
    let file = MappedFile::open(&path, Mode::ReadOnly).unwrap();

    // A limit of zero (the kernel says EPERM) and a small one (ENOMEM).
    for limit in [0, PAGE as u64] {
        set_memlock_limit(limit);
        let err = file.lock().unwrap_err();
        assert!(
            matches!(err, Error::LockLimit { requested, limit: l }
                if requested == 64 * PAGE as u64 && l == limit),
            "{err}"
        );
        assert!(err.to_string().contains("RLIMIT_MEMLOCK"), "{err}");
    }
    // Within a limit that fits, it locks.
    set_memlock_limit(128 * PAGE as u64);
    file.lock().unwrap();
    file.unlock().unwrap();
}

#[test]
fn an_empty_file_maps_to_an_empty_mapping() {
    let (path, _cleanup) = fresh_file("mapped-empty");
    std::fs::write(&path, b"").unwrap();
    for mode in [Mode::ReadOnly, Mode::ReadWrite, Mode::CopyOnWrite] {
        let mut file = MappedFile::open(&path, mode).unwrap();
        assert_eq!(file.len(), 0, "{mode:?}");
        assert!(file.is_empty());
        assert_eq!(file.read_vec(0, 0).unwrap(), b"");
        assert!(matches!(file.read::<u8>(0), Err(Error::OutOfBounds { .. })));
        if mode.is_writable() {
            assert!(matches!(
                file.write_bytes(0, b"x"),
                Err(Error::OutOfBounds { .. })
            ));
        }
        file.advise(Advice::Sequential).unwrap();
        file.lock().unwrap();
        file.unlock().unwrap();
        // SAFETY: nothing else maps or writes this fresh file.
        assert!(unsafe { file.as_slice() }.is_empty());
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"");
}

#[test]
fn creating_zero_bytes_is_refused_and_leaves_no_file() {
    let (path, _cleanup) = fresh_file("mapped-zero");
    let err = MappedFile::create(&path, 0).unwrap_err();
    assert!(matches!(err, Error::InvalidSize { .. }), "{err}");
    assert!(!path.exists());
    assert!(matches!(
        MappedFile::create(&path, u64::MAX),
        Err(Error::InvalidSize { .. })
    ));
    assert!(!path.exists());
}

#[test]
fn create_never_overwrites_an_existing_file() {
    let (path, _cleanup) = fresh_file("mapped-exists");
    std::fs::write(&path, b"keep me").unwrap();
    match MappedFile::create(&path, PAGE as u64) {
        Err(Error::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists)
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

#[test]
fn created_files_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let (path, _cleanup) = fresh_file("mapped-mode");
    let _file = MappedFile::create(&path, PAGE as u64).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
}

#[test]
fn opening_a_missing_file_says_so() {
    let (path, _cleanup) = fresh_file("mapped-missing");
    for mode in [Mode::ReadOnly, Mode::ReadWrite, Mode::CopyOnWrite] {
        match MappedFile::open(&path, mode) {
            Err(err @ Error::Io { .. }) => {
                assert!(err.to_string().contains(&path.display().to_string()));
                let Error::Io { source, .. } = err else {
                    unreachable!()
                };
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("{mode:?}: expected NotFound, got {other:?}"),
        }
    }
    assert!(!path.exists(), "open must not create the file");
}

/// Fails unless the child process ran its one test and passed.
fn assert_child_passed(output: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "the child test did not run: {stdout}"
    );
}
