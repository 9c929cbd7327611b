//! Read-only attachment: a reader sees what writers write, cannot write
//! itself (the kernel refuses), and is refused like a read-write attacher
//! when the segment is missing, anonymous or corrupt.
//!
//! Every reader here maps its segment `PROT_READ`, so attaching would fault
//! if the attach path stored anything to the segment.

mod common;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::time::Duration;

use common::{child_env, fresh_file, fresh_shm, shm_name, spawn_self};
use shmkit::segment::header::FORMAT_VERSION;
use shmkit::{
    AllocatorKind, BumpAllocator, Error, LinearAlloc, Offset, ReadOnlySegment, Segment,
    SegmentAllocator, SegmentOptions,
};

/// The uid and gid of `nobody`, for checks that root's privileges would hide.
const NOBODY: u32 = 65534;

/// Writes `bytes` at `offset` of a segment's header, behind shmkit's back.
fn poke(segment: &Segment, offset: usize, bytes: &[u8]) {
    // SAFETY: the test owns the segment; offsets are inside the header.
    unsafe {
        let dst = segment.base().as_ptr().add(offset);
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
    }
}

#[test]
fn a_reader_sees_the_writers_values_roots_and_growth() {
    let (options, _cleanup) = fresh_shm("ro-sees");
    let options = options
        .size(1 << 20)
        .max_size(4 << 20)
        .custom_header_len(64);
    let writer = BumpAllocator::create(&options).unwrap();
    let segment = writer.segment();
    let value = writer.make_handle(0x5eed_cafe_u64).unwrap();
    let text = writer.make_handle(*b"read me only").unwrap();
    segment.set_root("value", value).unwrap();

    let reader = Segment::attach_read_only(&options).unwrap();
    assert_eq!(reader.id(), segment.id());
    assert_eq!(reader.name(), segment.name());
    assert_eq!(reader.size(), segment.size());
    assert_eq!(reader.max_size(), segment.max_size());
    assert_eq!(reader.allocator_kind(), AllocatorKind::Bump);
    assert_eq!(reader.allocator_params(), segment.allocator_params());
    assert_eq!(reader.creator_pid(), std::process::id());
    assert_eq!(reader.format_version(), FORMAT_VERSION);
    assert_eq!(reader.data_offset(), segment.data_offset());
    reader.expect_allocator(AllocatorKind::Bump, None).unwrap();
    assert!(matches!(
        reader.expect_allocator(AllocatorKind::Stack, None),
        Err(Error::WrongAllocator { .. })
    ));

    let found = reader
        .root::<u64>("value")
        .expect("published before attaching");
    assert_eq!(found, value);
    assert_eq!(reader.read(found).unwrap(), 0x5eed_cafe);
    let resolved = reader.resolve(found).unwrap();
    // SAFETY: resolved (in bounds, aligned); nobody writes the value now.
    assert_eq!(unsafe { resolved.read_volatile() }, 0x5eed_cafe);
    let mut copied = [0u8; 12];
    reader.read_bytes(text.raw(), &mut copied).unwrap();
    assert_eq!(&copied, b"read me only");

    // What the writer does later shows through: a new value, a new root, a
    // new custom header and a larger size.
    let in_writer = segment.resolve(value).unwrap();
    // SAFETY: resolved (in bounds, aligned); this thread is the only writer.
    unsafe { in_writer.as_ptr().write_volatile(7) };
    assert_eq!(reader.read(found).unwrap(), 7);

    let later = writer.make_handle(11u64).unwrap();
    segment.set_root("later", later).unwrap();
    assert_eq!(reader.root::<u64>("later"), Some(later));
    let mut names: Vec<String> = reader.roots().into_iter().map(|(name, _)| name).collect();
    names.sort();
    assert_eq!(names, ["later", "value"]);

    let custom = segment.custom_header::<u64>().unwrap();
    // SAFETY: checked to hold a `u64`; this thread is the only writer.
    unsafe { custom.as_ptr().write_volatile(99) };
    let custom = reader.custom_header::<u64>().unwrap();
    // SAFETY: checked to hold a `u64`; nobody writes it now.
    assert_eq!(unsafe { custom.read_volatile() }, 99);
    assert!(matches!(
        reader.custom_header::<[u64; 9]>(),
        Err(Error::InvalidSize { .. })
    ));

    segment.grow(2 << 20).unwrap();
    assert_eq!(reader.size(), 2 << 20);
}

#[test]
fn a_shared_descriptor_attaches_read_only() {
    let writer = BumpAllocator::create(&SegmentOptions::memfd("ro-fd").size(1 << 20)).unwrap();
    let value = writer.make_handle(3u64).unwrap();
    let fd = writer
        .segment()
        .fd()
        .expect("a memfd segment has a descriptor")
        .try_clone_to_owned()
        .unwrap();
    let reader = ReadOnlySegment::attach(&SegmentOptions::fd(fd)).unwrap();
    assert_eq!(reader.id(), writer.segment().id());
    assert_eq!(reader.read(value).unwrap(), 3);
}

#[test]
#[ignore = "child process of writing_through_a_read_only_attachment_faults"]
fn child_writes_through_a_read_only_attachment() {
    let name = child_env("SHMKIT_TEST_SEGMENT");
    let reader = ReadOnlySegment::attach(&SegmentOptions::shm(name)).unwrap();
    let value = reader
        .root::<u64>("value")
        .expect("published by the parent");
    let target = reader.resolve(value).unwrap().cast_mut();
    println!("attached");
    // SAFETY: in bounds and aligned (resolved). The page is mapped read-only,
    // so this store is meant to fault and kill the process.
    unsafe { target.write_volatile(0xbad) };
    println!("the write went through");
}

#[test]
fn writing_through_a_read_only_attachment_faults() {
    let (options, _cleanup) = fresh_shm("ro-fault");
    let writer = BumpAllocator::create(&options.clone().size(1 << 20)).unwrap();
    let value = writer.make_handle(1u64).unwrap();
    writer.segment().set_root("value", value).unwrap();

    let mut child = spawn_self(
        "child_writes_through_a_read_only_attachment",
        &[("SHMKIT_TEST_SEGMENT", shm_name(&options))],
    );
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        child.pre_exec(|| {
            // The crash is expected: leave no core file behind.
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::setrlimit(libc::RLIMIT_CORE, &no_core) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = child.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("attached") && !stdout.contains("went through"),
        "child said: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGSEGV),
        "child ended with {:?}",
        output.status
    );
    let in_writer = writer.segment().resolve(value).unwrap();
    // SAFETY: resolved (in bounds, aligned); nobody writes it now.
    assert_eq!(unsafe { in_writer.as_ptr().read_volatile() }, 1);
}

#[test]
fn mprotect_cannot_make_a_read_only_attachment_writable() {
    let (options, _cleanup) = fresh_shm("ro-mprotect");
    let _writer = Segment::create(&options.clone().size(1 << 20)).unwrap();
    let reader = ReadOnlySegment::attach(&options).unwrap();
    // SAFETY: `sysconf` has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    // SAFETY: the first page belongs to this reader's mapping; were the call
    // to succeed, nothing would write through it anyway.
    let rc = unsafe {
        libc::mprotect(
            reader.base().cast_mut().cast(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    let error = std::io::Error::last_os_error();
    assert_eq!(rc, -1, "a read-only mapping was made writable");
    assert_eq!(error.raw_os_error(), Some(libc::EACCES));
}

#[test]
fn attaching_read_only_what_is_not_there_is_refused() {
    let (options, _cleanup) = fresh_shm("ro-missing");
    match ReadOnlySegment::attach(&options) {
        Err(Error::NotFound { name }) => assert!(name.contains("ro-missing")),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(matches!(
        Segment::attach_read_only(&SegmentOptions::private()),
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(
        ReadOnlySegment::attach(&SegmentOptions::memfd("ro-memfd")),
        Err(Error::Unsupported(_))
    ));

    let (path, _cleanup_file) = fresh_file("ro-zeros");
    std::fs::write(&path, vec![0u8; 8192]).unwrap();
    let impatient = SegmentOptions::file(&path).ready_timeout(Duration::from_millis(50));
    assert!(matches!(
        ReadOnlySegment::attach(&impatient),
        Err(Error::NotReady { .. })
    ));
    std::fs::write(&path, vec![0xAB; 8192]).unwrap();
    assert!(matches!(
        ReadOnlySegment::attach(&SegmentOptions::file(&path)),
        Err(Error::NotShmkit { .. })
    ));
}

#[test]
fn a_corrupt_header_is_refused_read_only() {
    let (options, _cleanup) = fresh_shm("ro-corrupt");
    let segment = Segment::create(&options.clone().size(1 << 20)).unwrap();
    // max_size lives at offset 40; any change breaks the layout hash.
    let max = segment.max_size();
    poke(&segment, 40, &(max * 2).to_ne_bytes());
    assert!(matches!(
        ReadOnlySegment::attach(&options),
        Err(Error::CorruptHeader { .. })
    ));
    poke(&segment, 40, &max.to_ne_bytes());
    ReadOnlySegment::attach(&options).unwrap();

    poke(&segment, 8, &(FORMAT_VERSION + 1).to_ne_bytes());
    assert!(matches!(
        ReadOnlySegment::attach(&options),
        Err(Error::UnsupportedVersion { .. })
    ));
}

/// Publishes 5 under the root "value" in a new file segment whose mode lets
/// its owner read only.
fn create_owner_read_only_file(path: &Path) {
    let writer =
        BumpAllocator::create(&SegmentOptions::file(path).size(1 << 20).mode(0o400)).unwrap();
    let value = writer.make_handle(5u64).unwrap();
    writer.segment().set_root("value", value).unwrap();
}

/// Asserts that the segment file at `path` attaches read-only and reads
/// back, but is refused read-write.
fn assert_attaches_only_read_only(path: &Path) {
    let options = SegmentOptions::file(path);
    assert!(matches!(
        Segment::attach(&options),
        Err(Error::PermissionDenied { .. })
    ));
    let reader = ReadOnlySegment::attach(&options).unwrap();
    let value = reader
        .root::<u64>("value")
        .expect("published by the creator");
    assert_eq!(reader.read(value).unwrap(), 5);
}

#[test]
#[ignore = "child process of a_file_its_owner_may_only_read_attaches_read_only"]
fn child_attaches_a_read_only_file_as_nobody() {
    let path = child_env("SHMKIT_TEST_FILE");
    assert_attaches_only_read_only(Path::new(&path));
    println!("checked");
}

#[test]
fn a_file_its_owner_may_only_read_attaches_read_only() {
    let (path, _cleanup) = fresh_file("ro-0400");
    create_owner_read_only_file(&path);
    // SAFETY: `geteuid` has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert_attaches_only_read_only(&path);
        return;
    }
    // Root opens any file whatever its mode, so the read-write refusal can
    // only be seen by another user: hand the file to `nobody` and check
    // from a child running as `nobody`.
    std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
    let mut child = spawn_self(
        "child_attaches_a_read_only_file_as_nobody",
        &[("SHMKIT_TEST_FILE", path.display().to_string())],
    );
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        child.pre_exec(|| {
            if libc::setgid(NOBODY) != 0 || libc::setuid(NOBODY) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = child.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("checked"),
        "child said: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn reads_outside_the_segment_are_errors() {
    let (options, _cleanup) = fresh_shm("ro-bounds");
    let writer = Segment::create(&options.clone().size(1 << 16).max_size(1 << 20)).unwrap();
    let reader = ReadOnlySegment::attach(&options).unwrap();
    let size = reader.size();
    assert_eq!(size, 1 << 16);

    assert!(matches!(
        reader.read(Offset::<u64>::from_raw(size - 4)),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        reader.read(Offset::<u64>::null()),
        Err(Error::NullOffset)
    ));
    assert!(matches!(
        reader.read(Offset::<u64>::from_raw(reader.data_offset() + 1)),
        Err(Error::Misaligned { .. })
    ));
    assert!(matches!(
        reader.resolve_array(Offset::<u64>::from_raw(reader.data_offset()), u64::MAX),
        Err(Error::InvalidSize { .. })
    ));
    assert!(matches!(
        reader.read_bytes(size - 2, &mut [0u8; 4]),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        reader.read_bytes(u64::MAX, &mut [0u8; 1]),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        reader.check_range(size, 1),
        Err(Error::OutOfBounds { .. })
    ));
    // The last bytes, and an empty read at the very end, are inside.
    reader.read_bytes(size - 4, &mut [0u8; 4]).unwrap();
    reader.read_bytes(size, &mut []).unwrap();

    // Mapped but beyond the current size: refused until a writer grows it.
    let past_end = Offset::<u64>::from_raw(size);
    assert!(matches!(
        reader.read(past_end),
        Err(Error::OutOfBounds { .. })
    ));
    writer.grow(2 * size).unwrap();
    assert_eq!(reader.read(past_end).unwrap(), 0);
}
