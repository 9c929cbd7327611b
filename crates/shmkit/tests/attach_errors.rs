//! Every way attaching can fail gets its own typed error, and a failed attach
//! changes nothing.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{child_env, dead_pid, fresh_file, fresh_shm, shm_name, spawn_self};
use shmkit::segment::header::FORMAT_VERSION;
use shmkit::{
    AllocatorKind, BumpAllocator, Error, Opened, Segment, SegmentAllocator, SegmentOptions,
    StackAllocator,
};

/// Writes `bytes` at `offset` of a segment's header, behind shmkit's back.
fn poke(segment: &Segment, offset: usize, bytes: &[u8]) {
    // SAFETY: the test owns the segment; offsets are inside the header.
    unsafe {
        let dst = segment.base().as_ptr().add(offset);
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
    }
}

#[test]
fn attaching_a_missing_name_is_not_found() {
    let (options, _cleanup) = fresh_shm("missing");
    match Segment::attach(&options) {
        Err(Error::NotFound { name }) => assert!(name.contains("missing")),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[test]
fn creating_an_existing_name_is_already_exists_and_keeps_the_original() {
    let (options, _cleanup) = fresh_shm("exists");
    let first = BumpAllocator::create(&options.clone().size(1 << 20)).unwrap();
    let id = first.segment().id();
    assert!(matches!(
        BumpAllocator::create(&options),
        Err(Error::AlreadyExists { .. })
    ));
    // The original is untouched and still attachable.
    let again = BumpAllocator::attach(&options).unwrap();
    assert_eq!(again.segment().id(), id);
}

#[test]
fn foreign_bytes_are_not_shmkit() {
    let (path, _cleanup) = fresh_file("foreign");
    std::fs::write(&path, vec![0xAB; 8192]).unwrap();
    assert!(matches!(
        Segment::attach(&SegmentOptions::file(&path)),
        Err(Error::NotShmkit { .. })
    ));
    // A tiny foreign file is foreign too, not "truncated".
    std::fs::write(&path, b"hi").unwrap();
    assert!(matches!(
        Segment::attach(&SegmentOptions::file(&path)),
        Err(Error::NotShmkit { .. })
    ));
    // Nothing was changed by the failed attaches.
    assert_eq!(std::fs::read(&path).unwrap(), b"hi");
}

#[test]
fn a_zero_filled_object_is_not_ready_after_the_timeout() {
    let (path, _cleanup) = fresh_file("zeros");
    std::fs::write(&path, vec![0u8; 8192]).unwrap();
    let options = SegmentOptions::file(&path).ready_timeout(Duration::from_millis(50));
    assert!(matches!(
        Segment::attach(&options),
        Err(Error::NotReady { .. })
    ));
}

#[test]
fn another_format_version_is_unsupported() {
    let (options, _cleanup) = fresh_shm("version");
    let segment = Segment::create(&options.clone().size(1 << 20)).unwrap();
    poke(&segment, 8, &(FORMAT_VERSION + 1).to_ne_bytes());
    match Segment::attach(&options) {
        Err(Error::UnsupportedVersion { found, supported }) => {
            assert_eq!(found, FORMAT_VERSION + 1);
            assert_eq!(supported, FORMAT_VERSION);
        }
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
}

#[test]
fn a_changed_layout_field_is_a_corrupt_header() {
    let (options, _cleanup) = fresh_shm("corrupt");
    let segment = Segment::create(&options.clone().size(1 << 20)).unwrap();
    // max_size lives at offset 40; any change breaks the layout hash.
    let max = segment.max_size();
    poke(&segment, 40, &(max * 2).to_ne_bytes());
    assert!(matches!(
        Segment::attach(&options),
        Err(Error::CorruptHeader { .. })
    ));
    // Restored, it attaches again: the failed attach changed nothing.
    poke(&segment, 40, &max.to_ne_bytes());
    Segment::attach(&options).unwrap();
    // An allocator kind swapped behind the hash's back is caught as well.
    poke(&segment, 56, &AllocatorKind::Bump.code().to_ne_bytes());
    assert!(matches!(
        Segment::attach(&options),
        Err(Error::CorruptHeader { .. })
    ));
}

#[test]
fn another_allocator_kind_is_refused() {
    let (options, _cleanup) = fresh_shm("kind");
    let _stack = StackAllocator::create(&options.clone().size(1 << 20)).unwrap();
    match BumpAllocator::attach(&options) {
        Err(Error::WrongAllocator { expected, found }) => {
            assert_eq!(expected, AllocatorKind::Bump);
            assert_eq!(found, AllocatorKind::Stack);
        }
        other => panic!("expected WrongAllocator, got {other:?}"),
    }
    // open_or_create refuses it the same way instead of re-creating.
    assert!(matches!(
        BumpAllocator::open_or_create(&options),
        Err(Error::WrongAllocator { .. })
    ));
    StackAllocator::attach(&options).unwrap();
}

/// An allocator defined outside shmkit, with one parameter.
struct Tagged {
    segment: Segment,
}

impl SegmentAllocator for Tagged {
    const KIND: AllocatorKind = AllocatorKind::Custom(shmkit::alloc::CUSTOM_KIND_BASE + 1);
    type Params = u64;

    fn encode_params(tag: &u64) -> [u64; 4] {
        [*tag, 0, 0, 0]
    }
    fn state_len(_: &u64) -> u64 {
        64
    }
    fn initialize(_segment: &Segment, tag: &u64) -> shmkit::Result<()> {
        if *tag == u64::MAX {
            return Err(Error::Unsupported("tag u64::MAX refuses to initialize"));
        }
        Ok(())
    }
    fn from_segment(segment: Segment) -> shmkit::Result<Self> {
        segment.expect_allocator(Self::KIND, None)?;
        Ok(Tagged { segment })
    }
}

#[test]
fn other_allocator_parameters_are_refused() {
    let (options, _cleanup) = fresh_shm("params");
    let created = Tagged::create_with(&options.clone().size(1 << 20), &7).unwrap();
    assert_eq!(created.segment.allocator_params()[0], 7);
    match Tagged::attach_with(&options, &8) {
        Err(Error::WrongAllocatorParams {
            expected, found, ..
        }) => {
            assert_eq!(expected[0], 8);
            assert_eq!(found[0], 7);
        }
        other => panic!("expected WrongAllocatorParams, got {:?}", other.map(|_| ())),
    }
    Tagged::attach_with(&options, &7).unwrap();
}

#[test]
fn a_failed_initialization_leaves_no_name_behind() {
    let (options, _cleanup) = fresh_shm("failinit");
    assert!(matches!(
        Tagged::create_with(&options.clone().size(1 << 20), &u64::MAX),
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(
        Segment::attach(&options),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn a_truncated_file_is_reported_with_both_sizes() {
    let (path, _cleanup) = fresh_file("truncated");
    let options = SegmentOptions::file(&path).size(1 << 20);
    drop(BumpAllocator::create(&options).unwrap());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(64 << 10)
        .unwrap();
    match BumpAllocator::attach(&options) {
        Err(Error::Truncated { expected, actual }) => {
            assert_eq!(expected, 1 << 20);
            assert_eq!(actual, 64 << 10);
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    // Shorter than a header, with the magic still there: truncated too.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(100)
        .unwrap();
    assert!(matches!(
        BumpAllocator::attach(&options),
        Err(Error::Truncated { actual: 100, .. })
    ));
}

#[test]
fn a_forged_dead_creator_is_reported() {
    let (options, _cleanup) = fresh_shm("forged");
    let segment = Segment::create(&options.clone().size(1 << 20)).unwrap();
    poke(&segment, 24, &1u32.to_ne_bytes()); // state: initializing
    poke(&segment, 28, &dead_pid().to_ne_bytes());
    assert!(matches!(
        Segment::attach(&options),
        Err(Error::CreatorDied { .. })
    ));
}

/// An allocator whose initialization never finishes, to stand for a creator
/// that is slow or dies half-way.
struct Stalls;

impl SegmentAllocator for Stalls {
    const KIND: AllocatorKind = AllocatorKind::Custom(shmkit::alloc::CUSTOM_KIND_BASE + 2);
    type Params = ();
    fn encode_params(_: &()) -> [u64; 4] {
        [0; 4]
    }
    fn state_len(_: &()) -> u64 {
        0
    }
    fn initialize(_: &Segment, _: &()) -> shmkit::Result<()> {
        println!("initializing");
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    fn from_segment(_: Segment) -> shmkit::Result<Self> {
        Ok(Stalls)
    }
}

#[test]
#[ignore = "child process of a_creator_killed_before_ready_is_reported"]
fn child_creator_that_stalls() {
    let name = child_env("SHMKIT_TEST_SEGMENT");
    let _ = Stalls::create(&SegmentOptions::shm(name).size(1 << 20));
    unreachable!("initialization never returns");
}

#[test]
fn a_creator_killed_before_ready_is_reported() {
    let (options, _cleanup) = fresh_shm("killed");
    let name = shm_name(&options);
    let mut child = spawn_self(
        "child_creator_that_stalls",
        &[("SHMKIT_TEST_SEGMENT", name)],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // Wait until the child is inside initialization.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("initializing") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() > 0,
            "child exited early"
        );
    }
    // While it lives, an impatient attacher is told the segment is not ready.
    let impatient = options.clone().ready_timeout(Duration::from_millis(100));
    assert!(matches!(
        Segment::attach(&impatient),
        Err(Error::NotReady { .. })
    ));
    // SIGKILL it mid-initialization; once reaped, attachers learn it died.
    child.kill().unwrap();
    child.wait().unwrap();
    match Segment::attach(&options) {
        Err(Error::CreatorDied { pid }) => assert_eq!(pid, child.id()),
        other => panic!("expected CreatorDied, got {other:?}"),
    }
}

#[test]
#[ignore = "child process of permission_denied_is_reported"]
fn child_attach_as_another_user() {
    let name = child_env("SHMKIT_TEST_SEGMENT");
    match Segment::attach(&SegmentOptions::shm(name)) {
        Err(Error::PermissionDenied { .. }) => println!("permission-denied"),
        other => println!("unexpected: {other:?}"),
    }
}

#[test]
fn permission_denied_is_reported() {
    let (options, _cleanup) = fresh_shm("perm");
    let _segment = Segment::create(&options.clone().size(1 << 20)).unwrap();
    // SAFETY: `geteuid` has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let locked = fresh_shm("perm-locked");
        let _locked = Segment::create(&locked.0.clone().size(1 << 20).mode(0o000)).unwrap();
        assert!(matches!(
            Segment::attach(&locked.0),
            Err(Error::PermissionDenied { .. })
        ));
        return;
    }
    // Root bypasses permission bits: attach from a child that drops to `nobody`.
    let name = shm_name(&options);
    let mut cmd = spawn_self(
        "child_attach_as_another_user",
        &[("SHMKIT_TEST_SEGMENT", name)],
    );
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("permission-denied"),
        "child said: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn names_with_slashes_or_dots_are_refused() {
    for bad in ["a/b", "..", ".", "", "/", "x\0y"] {
        assert!(
            matches!(
                Segment::create(&SegmentOptions::shm(bad)),
                Err(Error::InvalidName { .. })
            ),
            "{bad:?} was accepted"
        );
    }
}

#[test]
fn new_segments_get_exactly_the_mode_asked_for() {
    let (options, _cleanup) = fresh_shm("mode");
    let name = shm_name(&options);
    let _default = Segment::create(&options.clone().size(1 << 20)).unwrap();
    let mode = std::fs::metadata(format!("/dev/shm/{name}"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let (path, _cleanup_file) = fresh_file("mode");
    let _group = Segment::create(&SegmentOptions::file(&path).size(1 << 20).mode(0o640)).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o640);
}

#[test]
fn file_creation_refuses_a_symlink() {
    let (path, _cleanup) = fresh_file("symlink");
    let (target, _cleanup_target) = fresh_file("symlink-target");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    assert!(Segment::create(&SegmentOptions::file(&path).size(1 << 20)).is_err());
    assert!(!target.exists(), "the link was followed");
}

#[test]
fn a_full_backing_store_fails_at_creation_and_leaves_nothing() {
    let (options, _cleanup) = fresh_shm("nospace");
    // Far more than any /dev/shm holds.
    match Segment::create(&options.clone().size(1 << 44)) {
        Err(Error::NoSpace { requested, .. }) => assert_eq!(requested, 1 << 44),
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert!(matches!(
        Segment::attach(&options),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn open_or_create_says_which_happened() {
    let (options, _cleanup) = fresh_shm("ooc");
    let options = options.size(1 << 20);
    let (first, opened) = BumpAllocator::open_or_create(&options).unwrap();
    assert_eq!(opened, Opened::Created);
    let (second, opened) = BumpAllocator::open_or_create(&options).unwrap();
    assert_eq!(opened, Opened::Attached);
    assert_eq!(first.segment().id(), second.segment().id());
}

/// Starts a child that creates `options`'s segment and stalls in its
/// initialization; returns it once it is inside.
fn stalled_creator(options: &SegmentOptions) -> std::process::Child {
    let mut child = spawn_self(
        "child_creator_that_stalls",
        &[("SHMKIT_TEST_SEGMENT", shm_name(options))],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("initializing") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() > 0,
            "child exited early"
        );
    }
    child
}

/// Waits until process `pid` has exited and is a zombie (not reaped).
fn wait_for_zombie(pid: u32) {
    let started = std::time::Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        if state == "Z" {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{pid} is {state}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn an_unreaped_creator_counts_as_dead() {
    let (options, _cleanup) = fresh_shm("zombie");
    let mut child = stalled_creator(&options);
    // SIGKILL, and leave it unreaped: `kill(pid, 0)` still answers for it.
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    wait_for_zombie(child.id());
    match Segment::attach(&options) {
        Err(Error::CreatorDied { .. }) => {}
        other => panic!("expected CreatorDied, got {other:?}"),
    }
    child.wait().unwrap();
}

#[test]
fn open_or_create_takes_back_a_name_whose_creator_died() {
    let (options, _cleanup) = fresh_shm("reclaim");
    let options = options.size(1 << 20);
    let mut child = stalled_creator(&options);
    child.kill().unwrap();
    child.wait().unwrap();
    // Two processes' worth of racers: one makes the segment anew, the
    // other attaches what it made; neither waits out a timeout.
    let results: Vec<_> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| BumpAllocator::open_or_create(&options)))
            .collect();
        racers
            .into_iter()
            .map(|racer| racer.join().unwrap())
            .collect()
    });
    let mut opened: Vec<_> = results
        .into_iter()
        .map(|result| {
            let (bump, opened) = result.expect("open_or_create after a dead creator");
            (opened, bump.segment().id())
        })
        .collect();
    opened.sort_by_key(|(opened, _)| *opened == Opened::Attached);
    assert_eq!(opened[0].0, Opened::Created);
    assert_eq!(opened[1].0, Opened::Attached);
    assert_eq!(opened[0].1, opened[1].1, "both hold the one new segment");
    let attached = BumpAllocator::attach(&options).unwrap();
    assert_eq!(attached.segment().id(), opened[0].1);
}

#[test]
fn a_live_creators_segment_is_never_reclaimed() {
    let (options, _cleanup) = fresh_shm("no-reclaim");
    let impatient = options
        .clone()
        .size(1 << 20)
        .ready_timeout(Duration::from_millis(200));
    let mut child = stalled_creator(&options);
    assert!(matches!(
        BumpAllocator::open_or_create(&impatient),
        Err(Error::NotReady { .. })
    ));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn dropping_handles_never_removes_the_segment() {
    let (options, _cleanup) = fresh_shm("persist");
    let id = Segment::create(&options.clone().size(1 << 20))
        .unwrap()
        .id();
    let attached = Segment::attach(&options).unwrap();
    assert_eq!(attached.id(), id);
    drop(attached);
    assert_eq!(Segment::attach(&options).unwrap().id(), id);
    Segment::attach(&options).unwrap().unlink().unwrap();
    assert!(matches!(
        Segment::attach(&options),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn anonymous_segments_cannot_be_attached_by_name() {
    assert!(matches!(
        Segment::attach(&SegmentOptions::private()),
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(
        Segment::attach(&SegmentOptions::memfd("x")),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn a_segment_smaller_than_its_header_is_refused() {
    assert!(matches!(
        BumpAllocator::create(&SegmentOptions::private().size(1).custom_header_len(1 << 20)),
        Err(Error::InvalidSize { .. })
    ));
    let mut tiny = [0u8; 300];
    assert!(matches!(
        BumpAllocator::in_buffer(&mut tiny),
        Err(Error::InvalidSize { .. })
    ));
}
