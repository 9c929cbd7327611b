//! Looking into segments: `ls`, `stat`, `check`, `create` and `rm`.
//!
//! Exit codes (for scripts): 0 success; 1 the operation failed (no such
//! segment, not a shmkit segment, refused); 2 bad usage; 3 `check` found an
//! inconsistency.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};
use shmkit::named::{NamedObject, NamedObjects};
use shmkit::segment::header::MAGIC;
use shmkit::segment::process_alive;
use shmkit::{AllocatorKind, AnyAllocator, Location, SegmentOptions};

use crate::units::{format_bytes, parse_size};

/// Exit code of `check` when the segment is not sound.
pub const EXIT_INCONSISTENT: u8 = 3;

/// Where POSIX shared-memory names live.
const SHM_DIR: &str = "/dev/shm";

/// How long to wait for a segment that is still being created.
const READY_WAIT: Duration = Duration::from_millis(200);

/// A shared-memory name, as `shmkit` takes it (with or without a leading `/`).
fn shm_name(name: &str) -> &str {
    name.strip_prefix('/').unwrap_or(name)
}

/// Refuses a name that would leave the shared-memory directory.
fn check_name(name: &str) -> Result<&str, String> {
    let bare = shm_name(name);
    if bare.is_empty() || bare.contains('/') || bare == "." || bare == ".." {
        return Err(format!(
            "{name}: not a shared-memory name (one path component, no `/` inside)"
        ));
    }
    Ok(bare)
}

/// What the first bytes of a file in the shared-memory directory say,
/// read without mapping it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    /// A shmkit segment (its magic is there).
    Shmkit,
    /// Sized, header not written yet: a segment its creator is making (or
    /// left half made).
    Unfinished,
    /// Nothing in it: no shmkit segment (a creator sizes it at once).
    Empty,
    /// Someone else's bytes.
    Foreign,
    /// This user may not read it.
    Unreadable,
    /// Gone, or some other error.
    Missing,
}

fn probe(path: &Path) -> Probe {
    use std::os::unix::fs::OpenOptionsExt;
    // A FIFO, socket or device would block or mislead a read: only a
    // regular file, not followed through a link, opened without blocking.
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Probe::Missing;
    };
    if !meta.is_file() {
        return Probe::Foreign;
    }
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path);
    let mut file = match opened {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            return Probe::Unreadable
        }
        Err(_) => return Probe::Missing,
    };
    let mut first = [0u8; 8];
    let mut read = 0;
    while read < first.len() {
        match file.read(&mut first[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(_) => return Probe::Missing,
        }
    }
    // A segment being made is sized in whole pages, at least a header's
    // worth, before its magic is written: eight zero bytes alone (a POSIX
    // semaphore at 0, another program's zeroed memory) are not one.
    let page_sized = meta.len() >= 4096 && meta.len() % 4096 == 0;
    match (read, u64::from_ne_bytes(first)) {
        (0, _) => Probe::Empty,
        (8, MAGIC) => Probe::Shmkit,
        (8, 0) if page_sized => Probe::Unfinished,
        _ => Probe::Foreign,
    }
}

/// Attaches the segment `name` and its allocator, with an error that says
/// what the name really is when it is not a usable shmkit segment.
pub fn open(name: &str) -> Result<AnyAllocator, String> {
    let path = Path::new(SHM_DIR).join(check_name(name)?);
    if let Some(problem) = not_a_segment(name, &path) {
        return Err(problem);
    }
    let options = SegmentOptions::shm(shm_name(name)).ready_timeout(READY_WAIT);
    AnyAllocator::attach(&options).map_err(|e| format!("{name}: {e}"))
}

/// Why `path` cannot be attached as a segment, when its first bytes say so.
fn not_a_segment(name: &str, path: &Path) -> Option<String> {
    match probe(path) {
        Probe::Shmkit | Probe::Missing => None,
        Probe::Unfinished => Some(format!(
            "{name}: a shmkit segment still being created (its header is not written yet), \
             or left so by a creator that died; `shmkit rm` removes it"
        )),
        Probe::Empty => Some(format!("{name}: not a shmkit segment (an empty file)")),
        Probe::Foreign => Some(format!("{name}: not a shmkit segment")),
        Probe::Unreadable => Some(format!(
            "{name}: permission denied (owner {}, mode {}); this user may not read it",
            owner_of(path),
            mode_of(path)
        )),
    }
}

/// A file's owner, by name where the system knows it.
fn owner_of(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(meta) => user_name(meta.uid()),
        Err(_) => "?".into(),
    }
}

/// A file's permission bits as `ls -l` shows them.
fn mode_of(path: &Path) -> String {
    std::fs::metadata(path).map_or("?".into(), |meta| mode_string(meta.mode()))
}

fn mode_string(mode: u32) -> String {
    let bits = "rwxrwxrwx";
    bits.chars()
        .enumerate()
        .map(|(i, c)| if mode & (0o400 >> i) != 0 { c } else { '-' })
        .collect()
}

/// The user name of `uid`, or the number.
fn user_name(uid: u32) -> String {
    let mut buffer = vec![0 as libc::c_char; 1024];
    // SAFETY: zeroed `passwd` is a valid out-parameter.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    loop {
        // SAFETY: every pointer names memory of the stated size that lives
        // across the call; getpwuid_r writes only into them.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            )
        };
        // A long entry: a bigger buffer (bounded), then again.
        if rc == libc::ERANGE && buffer.len() < 1 << 20 {
            buffer.resize(buffer.len() * 4, 0);
            continue;
        }
        if rc != 0 || found.is_null() {
            return uid.to_string();
        }
        break;
    }
    // SAFETY: on success `pw_name` points at a NUL-terminated name inside
    // `buffer`, which is still alive.
    unsafe { std::ffi::CStr::from_ptr(entry.pw_name) }
        .to_string_lossy()
        .into_owned()
}

#[derive(Args)]
pub struct LsArgs {
    /// Print JSON (an array of objects) instead of a table.
    #[arg(short, long)]
    json: bool,
    /// The directory to list (where the system keeps shared memory).
    #[arg(long, default_value = SHM_DIR)]
    dir: PathBuf,
}

fn summary(name: &str, heap: &AnyAllocator) -> Value {
    let segment = heap.segment();
    let stats = heap.stats();
    json!({
        "name": name,
        "size": segment.capacity(),
        "max_size": segment.max_size(),
        "backed": segment.backed_bytes().unwrap_or(segment.size()),
        "used": stats.allocated_bytes,
        "allocator": heap.kind().to_string(),
        "format_version": segment.format_version(),
        "zero_on_free": segment.zero_on_free(),
        "creator_pid": segment.creator_pid(),
        "creator_alive": process_alive(segment.creator_pid()),
    })
}

/// One file of the listing: what `stat` says (owner, mode, size), and
/// what attaching it says where this user may.
fn listing_row(dir: &Path, name: &str) -> Option<Value> {
    let path = dir.join(name);
    let meta = std::fs::metadata(&path).ok()?;
    let mut row = json!({
        "name": name,
        "owner": user_name(meta.uid()),
        "uid": meta.uid(),
        "mode": format!("{:o}", meta.mode() & 0o777),
        "file_size": meta.size(),
        // What the file system has allocated (st_blocks is in 512-byte units).
        "backed": meta.blocks().saturating_mul(512),
    });
    let state = match probe(&path) {
        Probe::Shmkit => "ready",
        Probe::Unfinished => "being created",
        Probe::Unreadable => "unreadable",
        Probe::Empty | Probe::Foreign | Probe::Missing => return None,
    };
    row["state"] = json!(state);
    if state != "ready" {
        return Some(row);
    }
    let options = if dir == Path::new(SHM_DIR) {
        SegmentOptions::shm(name)
    } else {
        SegmentOptions::file(path)
    }
    .ready_timeout(READY_WAIT);
    match AnyAllocator::attach(&options) {
        Ok(heap) => {
            let summary = summary(name, &heap);
            for key in [
                "size",
                "max_size",
                "backed",
                "used",
                "allocator",
                "format_version",
                "creator_pid",
                "creator_alive",
            ] {
                row[key] = summary[key].clone();
            }
            row["attached_processes"] = json!(heap
                .segment()
                .users()
                .ok()
                .map(|users| users.pids.len() + users.outside_namespace));
        }
        Err(_) => match shmkit::ReadOnlySegment::attach(&options) {
            // Readable, not writable: the header, not the accounting.
            Ok(segment) => {
                row["state"] = json!("read-only");
                row["size"] = json!(segment.capacity());
                row["max_size"] = json!(segment.max_size());
                row["backed"] = json!(segment.backed_bytes().unwrap_or(segment.size()));
                row["allocator"] = json!(segment.allocator_kind().to_string());
                row["format_version"] = json!(segment.format_version());
            }
            Err(error) => row["state"] = json!(format!("unusable: {error}")),
        },
    }
    Some(row)
}

pub fn ls(args: &LsArgs) -> Result<ExitCode, String> {
    let entries =
        std::fs::read_dir(&args.dir).map_err(|e| format!("reading {}: {e}", args.dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    let rows: Vec<Value> = names
        .iter()
        .filter_map(|name| listing_row(&args.dir, name))
        .collect();
    if args.json {
        println!("{}", Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    let text = |value: &Value| match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let bytes = |value: &Value| value.as_u64().map_or("-".into(), format_bytes);
    let table: Vec<[String; 9]> = rows
        .iter()
        .map(|row| {
            [
                text(&row["name"]),
                text(&row["owner"]),
                mode_string(
                    u32::from_str_radix(row["mode"].as_str().unwrap_or("0"), 8).unwrap_or(0),
                ),
                bytes(row.get("size").unwrap_or(&row["file_size"])),
                bytes(&row["backed"]),
                bytes(&row["used"]),
                text(&row["allocator"]),
                text(&row["attached_processes"]),
                text(&row["state"]),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "OWNER",
            "MODE",
            "SIZE",
            "BACKED",
            "USED",
            "ALLOCATOR",
            "ATTACHED",
            "STATE",
        ],
        &[false, false, false, true, true, true, false, true, false],
        &table,
    );
    Ok(ExitCode::SUCCESS)
}

/// Prints rows under `headers`, each column as wide as its widest cell
/// (names of any length keep the columns straight); `right` aligns
/// numbers.
fn print_table<const N: usize>(headers: &[&str; N], right: &[bool; N], rows: &[[String; N]]) {
    let mut widths = headers.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if right[i] {
                    format!("{cell:>width$}", width = widths[i])
                } else {
                    format!("{cell:<width$}", width = widths[i])
                }
            })
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[derive(Args)]
pub struct NameArgs {
    /// The segment's shared-memory name.
    name: String,
    /// Print JSON instead of text.
    #[arg(short, long)]
    json: bool,
}

pub fn stat(args: &NameArgs) -> Result<ExitCode, String> {
    let path = Path::new(SHM_DIR).join(check_name(&args.name)?);
    if let Some(problem) = not_a_segment(&args.name, &path) {
        return Err(problem);
    }
    let options = SegmentOptions::shm(shm_name(&args.name)).ready_timeout(READY_WAIT);
    let heap = match AnyAllocator::attach(&options) {
        Ok(heap) => heap,
        // Inspecting needs read access only.
        Err(shmkit::Error::PermissionDenied { .. }) => return stat_read_only(args, &options),
        Err(error) => return Err(format!("{}: {error}", args.name)),
    };
    let stats = heap.stats();
    let segment = heap.segment();
    let mut report = summary(&args.name, &heap);
    report["segment_id"] = json!(segment.id().to_string());
    report["data_offset"] = json!(segment.data_offset());
    report["allocator_params"] = json!(segment.allocator_params());
    report["roots"] = json!(segment
        .roots()
        .into_iter()
        .map(|(name, offset)| json!({"name": name, "offset": offset}))
        .collect::<Vec<_>>());
    let named = named_objects(&heap)?;
    report["named_objects"] = json!(named
        .iter()
        .map(|object| json!({
            "name": object.name,
            "type": object.type_name,
            "offset": object.offset,
            "size": object.size,
            "align": object.align,
        }))
        .collect::<Vec<_>>());
    report["allocated_bytes"] = json!(stats.allocated_bytes);
    report["peak_bytes"] = json!(stats.peak_bytes);
    // A linear allocator knows the bytes below its cursor, not how many
    // blocks lie there.
    let linear = matches!(heap.kind(), AllocatorKind::Bump | AllocatorKind::Stack);
    report["live_allocations"] = if linear {
        Value::Null
    } else {
        json!(stats.live_allocations)
    };
    report["free_bytes"] = json!(stats.free_bytes);
    report["largest_free_block"] = json!(stats.largest_free_block);
    report["capacity"] = json!(stats.capacity);
    report["fragmentation"] = json!(stats.fragmentation());
    if args.json {
        println!("{report}");
        return Ok(ExitCode::SUCCESS);
    }
    // A ready segment outlives its creator by design: its liveness matters
    // only while the segment is being made (`ls` shows that state).
    println!("segment            /{}", shm_name(&args.name));
    println!(
        "owner              {} ({})",
        owner_of(&path),
        mode_of(&path)
    );
    if let Ok(users) = segment.users() {
        println!(
            "attached by        {} other process(es){}",
            users.pids.len() + users.outside_namespace,
            if users.pids.is_empty() {
                String::new()
            } else {
                format!(
                    ": {}",
                    users
                        .pids
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    HeaderFacts {
        allocator: heap.kind(),
        format_version: segment.format_version(),
        id: segment.id(),
        zero_on_free: Some(segment.zero_on_free()),
        creator_pid: segment.creator_pid(),
        size: segment.capacity(),
        max_size: segment.max_size(),
        backed: segment.backed_bytes().unwrap_or(segment.size()),
        data_offset: segment.data_offset(),
    }
    .print();
    if linear {
        println!(
            "used               {} (below the cursor; a {} allocator counts bytes, not blocks)",
            format_bytes(stats.allocated_bytes),
            heap.kind()
        );
    } else {
        println!("allocated          {}", format_bytes(stats.allocated_bytes));
        println!("peak               {}", format_bytes(stats.peak_bytes));
        println!("live allocations   {}", stats.live_allocations);
    }
    println!("free               {}", format_bytes(stats.free_bytes));
    println!(
        "largest free block {}",
        format_bytes(stats.largest_free_block)
    );
    println!("capacity           {}", format_bytes(stats.capacity));
    println!("fragmentation      {:.1}%", 100.0 * stats.fragmentation());
    for (name, offset) in segment.roots() {
        println!("root               {name} -> {offset}");
    }
    for object in named {
        println!(
            "named object       {} -> {} ({}, {})",
            object.name,
            object.offset,
            object.type_name,
            format_bytes(object.size)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What a segment's header says, as `stat` prints it (from a writable or a
/// read-only attachment).
struct HeaderFacts {
    allocator: AllocatorKind,
    format_version: u32,
    id: shmkit::SegmentId,
    /// Not known without write access (the flag lives with the allocator).
    zero_on_free: Option<bool>,
    creator_pid: u32,
    /// The size it was created with.
    size: u64,
    max_size: u64,
    /// Bytes backed now (the allocators back the rest as they need it).
    backed: u64,
    data_offset: u64,
}

impl HeaderFacts {
    fn print(&self) {
        println!("allocator          {}", self.allocator);
        println!("format version     {}", self.format_version);
        println!("segment id         {}", self.id);
        if let Some(zero_on_free) = self.zero_on_free {
            println!("zero on free       {zero_on_free}");
        }
        println!("creator            pid {}", self.creator_pid);
        println!(
            "size               {} (max {}, {} backed)",
            format_bytes(self.size),
            format_bytes(self.max_size),
            format_bytes(self.backed)
        );
        println!("data offset        {}", self.data_offset);
    }
}

/// `stat` of a segment this user may read but not write: what the header
/// says (the allocator's accounting needs a writable mapping).
fn stat_read_only(args: &NameArgs, options: &SegmentOptions) -> Result<ExitCode, String> {
    let segment = shmkit::ReadOnlySegment::attach(options)
        .map_err(|error| format!("{}: {error}", args.name))?;
    let path = Path::new(SHM_DIR).join(shm_name(&args.name));
    let report = json!({
        "name": args.name,
        "access": "read-only",
        "owner": owner_of(&path),
        "mode": mode_of(&path),
        "size": segment.capacity(),
        "max_size": segment.max_size(),
        "backed": segment.backed_bytes().unwrap_or(segment.size()),
        "allocator": segment.allocator_kind().to_string(),
        "format_version": segment.format_version(),
        "segment_id": segment.id().to_string(),
        "data_offset": segment.data_offset(),
        "creator_pid": segment.creator_pid(),
        "roots": segment
            .roots()
            .into_iter()
            .map(|(name, offset)| json!({"name": name, "offset": offset}))
            .collect::<Vec<_>>(),
    });
    if args.json {
        println!("{report}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "segment            /{} (read-only: this user may not write it)",
        shm_name(&args.name)
    );
    println!(
        "owner              {} ({})",
        owner_of(&path),
        mode_of(&path)
    );
    HeaderFacts {
        allocator: segment.allocator_kind(),
        format_version: segment.format_version(),
        id: segment.id(),
        zero_on_free: None,
        creator_pid: segment.creator_pid(),
        size: segment.capacity(),
        max_size: segment.max_size(),
        backed: segment.backed_bytes().unwrap_or(segment.size()),
        data_offset: segment.data_offset(),
    }
    .print();
    for (name, offset) in segment.roots() {
        println!("root               {name} -> {offset}");
    }
    println!("accounting         needs write access (the allocator's state is read with atomics)");
    Ok(ExitCode::SUCCESS)
}

/// The segment's named objects, without creating a directory.
fn named_objects(heap: &AnyAllocator) -> Result<Vec<NamedObject>, String> {
    let Some(alloc) = heap.as_shm_allocator() else {
        return Ok(Vec::new());
    };
    match NamedObjects::open_existing(alloc) {
        Ok(Some(names)) => names.list().map_err(|error| error.to_string()),
        Ok(None) => Ok(Vec::new()),
        Err(error) => Err(error.to_string()),
    }
}

pub fn check(args: &NameArgs) -> Result<ExitCode, String> {
    let heap = open(&args.name)?;
    let result = heap.check();
    if args.json {
        let error = result.as_ref().err().map(|e| e.to_string());
        println!(
            "{}",
            json!({"name": args.name, "sound": result.is_ok(), "error": error})
        );
    } else {
        match &result {
            Ok(()) => println!("{}: sound", args.name),
            Err(err) => eprintln!("shmkit: {}: {err}", args.name),
        }
    }
    Ok(if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INCONSISTENT)
    })
}

/// Parses an allocator name as `create` takes it (the names of
/// [`AnyAllocator::KINDS`]).
fn parse_kind(text: &str) -> Result<AllocatorKind, String> {
    AnyAllocator::KINDS
        .into_iter()
        .find(|kind| kind.name() == text)
        .ok_or_else(|| {
            let names: Vec<&str> = AnyAllocator::KINDS.iter().map(|k| k.name()).collect();
            format!("`{text}` is not one of: {}", names.join(", "))
        })
}

#[derive(Args)]
pub struct CreateArgs {
    /// The new segment's shared-memory name.
    name: String,
    /// Its size, e.g. 64MiB or 1G.
    #[arg(short, long, value_parser = parse_size)]
    size: u64,
    /// The size it may grow to (default: its size).
    #[arg(long, value_parser = parse_size)]
    max_size: Option<u64>,
    /// The allocator that manages it: bump, stack, pool, free-list, buddy,
    /// size-class or thread-local.
    #[arg(short, long, value_parser = parse_kind)]
    allocator: AllocatorKind,
    /// Permission bits, in octal (default 600).
    #[arg(short, long, value_parser = parse_mode)]
    mode: Option<u32>,
    /// Zero every block as it is freed, in every process, so freed data
    /// does not linger (the allocators that free single blocks).
    #[arg(long)]
    zero_on_free: bool,
    /// Back the whole size now (by default memory is backed as the
    /// allocator fills the segment)
    #[arg(long)]
    commit_upfront: bool,
    /// Print JSON instead of text.
    #[arg(short, long)]
    json: bool,
}

fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| format!("`{text}` is not an octal mode such as 600"))
}

pub fn create(args: &CreateArgs) -> Result<ExitCode, String> {
    let mut options = SegmentOptions::shm(check_name(&args.name)?).size(args.size);
    if let Some(max) = args.max_size {
        options = options.max_size(max);
    }
    if let Some(mode) = args.mode {
        options = options.mode(mode);
    }
    options = options
        .zero_on_free(args.zero_on_free)
        .commit_upfront(args.commit_upfront);
    let made = AnyAllocator::create(args.allocator, &options)
        .map_err(|e| format!("{}: {e}", args.name))?;
    if args.json {
        println!(
            "{}",
            json!({
                "created": shm_name(&args.name),
                "size": made.segment().capacity(),
                "max_size": made.segment().max_size(),
                "backed": made.segment().backed_bytes().unwrap_or(made.segment().size()),
                "allocator": made.kind().to_string(),
                "mode": format!("{:o}", args.mode.unwrap_or(0o600)),
                "zero_on_free": made.segment().zero_on_free(),
            })
        );
    } else {
        println!(
            "created /{} ({}, {} allocator)",
            shm_name(&args.name),
            format_bytes(made.segment().capacity()),
            made.kind()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct RmArgs {
    /// The shared-memory name to remove.
    name: String,
    /// Remove it even if it is not a shmkit segment.
    #[arg(short, long)]
    force: bool,
    /// Print JSON instead of text.
    #[arg(short, long)]
    json: bool,
}

pub fn rm(args: &RmArgs) -> Result<ExitCode, String> {
    let name = check_name(&args.name)?;
    let path = Path::new(SHM_DIR).join(name);
    if std::fs::symlink_metadata(&path).is_err() {
        return Err(format!("{}: no such shared-memory segment", args.name));
    }
    if !args.force {
        match probe(&path) {
            Probe::Shmkit => {}
            Probe::Unfinished => {
                return Err(format!(
                    "{}: a shmkit segment still being created, or left so by a creator \
                     that died; use --force to remove it",
                    args.name
                ))
            }
            Probe::Unreadable => {
                return Err(format!(
                    "{}: permission denied (owner {}, mode {}): this user may not read it, so \
                     cannot tell it is a shmkit segment; --force removes it anyway where the \
                     directory allows",
                    args.name,
                    owner_of(&path),
                    mode_of(&path)
                ))
            }
            Probe::Empty | Probe::Foreign | Probe::Missing => {
                return Err(format!(
                    "{}: not a shmkit segment; use --force to remove it anyway",
                    args.name
                ))
            }
        }
    }
    shmkit::segment::remove(&Location::Shm(name.to_owned()))
        .map_err(|e| format!("{}: {e}", args.name))?;
    if args.json {
        println!("{}", json!({ "removed": name }));
    } else {
        println!("removed /{name}");
    }
    Ok(ExitCode::SUCCESS)
}
