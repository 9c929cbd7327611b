//! Looking into segments: `ls`, `stat`, `check`, `create` and `rm`.
//!
//! Exit codes (for scripts): 0 success; 1 the operation failed (no such
//! segment, not a shmkit segment, refused); 2 bad usage; 3 `check` found an
//! inconsistency.

use std::io::Read;
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

/// Attaches the segment `name` and its allocator.
pub fn open(name: &str) -> Result<AnyAllocator, String> {
    let options = SegmentOptions::shm(shm_name(name)).ready_timeout(READY_WAIT);
    AnyAllocator::attach(&options).map_err(|e| format!("{name}: {e}"))
}

#[derive(Args)]
pub struct LsArgs {
    /// Print JSON (an array of objects) instead of a table.
    #[arg(long)]
    json: bool,
    /// The directory to list (where the system keeps shared memory).
    #[arg(long, default_value = SHM_DIR)]
    dir: PathBuf,
}

/// Whether a file starts with the shmkit magic (read, never mapped: a
/// foreign or unreadable file is skipped, not an error).
fn has_magic(path: &Path) -> bool {
    let mut first = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut first))
        .is_ok_and(|()| u64::from_ne_bytes(first) == MAGIC)
}

fn summary(name: &str, heap: &AnyAllocator) -> Value {
    let segment = heap.segment();
    let stats = heap.stats();
    json!({
        "name": name,
        "size": segment.size(),
        "max_size": segment.max_size(),
        "used": stats.allocated_bytes,
        "allocator": heap.kind().to_string(),
        "format_version": segment.format_version(),
        "zero_on_free": segment.zero_on_free(),
        "creator_pid": segment.creator_pid(),
        "creator_alive": process_alive(segment.creator_pid()),
    })
}

pub fn ls(args: &LsArgs) -> Result<ExitCode, String> {
    let entries =
        std::fs::read_dir(&args.dir).map_err(|e| format!("reading {}: {e}", args.dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
        .filter(|entry| has_magic(&entry.path()))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    let rows: Vec<Value> = names
        .iter()
        .filter_map(|name| {
            let location = if args.dir == Path::new(SHM_DIR) {
                SegmentOptions::shm(name.as_str())
            } else {
                SegmentOptions::file(args.dir.join(name))
            };
            // A segment that vanished or is half-made is left out.
            let heap = AnyAllocator::attach(&location.ready_timeout(READY_WAIT)).ok()?;
            Some(summary(name, &heap))
        })
        .collect();
    if args.json {
        println!("{}", Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<32} {:>10} {:>10} {:<12} {:>7} {:>8} {:>6}",
        "NAME", "SIZE", "USED", "ALLOCATOR", "VERSION", "CREATOR", "ALIVE"
    );
    for row in &rows {
        println!(
            "{:<32} {:>10} {:>10} {:<12} {:>7} {:>8} {:>6}",
            row["name"].as_str().unwrap_or("?"),
            format_bytes(row["size"].as_u64().unwrap_or(0)),
            format_bytes(row["used"].as_u64().unwrap_or(0)),
            row["allocator"].as_str().unwrap_or("?"),
            row["format_version"].as_u64().unwrap_or(0),
            row["creator_pid"].as_u64().unwrap_or(0),
            if row["creator_alive"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct NameArgs {
    /// The segment's shared-memory name.
    name: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn stat(args: &NameArgs) -> Result<ExitCode, String> {
    let heap = open(&args.name)?;
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
    report["live_allocations"] = json!(stats.live_allocations);
    report["free_bytes"] = json!(stats.free_bytes);
    report["largest_free_block"] = json!(stats.largest_free_block);
    report["capacity"] = json!(stats.capacity);
    report["fragmentation"] = json!(stats.fragmentation());
    if args.json {
        println!("{report}");
        return Ok(ExitCode::SUCCESS);
    }
    let alive = if process_alive(segment.creator_pid()) {
        "alive"
    } else {
        "gone"
    };
    println!("segment            /{}", shm_name(&args.name));
    println!("allocator          {}", heap.kind());
    println!("format version     {}", segment.format_version());
    println!("segment id         {}", segment.id());
    println!("zero on free       {}", segment.zero_on_free());
    println!("creator            pid {} ({alive})", segment.creator_pid());
    println!(
        "size               {} (max {})",
        format_bytes(segment.size()),
        format_bytes(segment.max_size())
    );
    println!("data offset        {}", segment.data_offset());
    println!("allocated          {}", format_bytes(stats.allocated_bytes));
    println!("peak               {}", format_bytes(stats.peak_bytes));
    println!("live allocations   {}", stats.live_allocations);
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
    #[arg(long, value_parser = parse_size)]
    size: u64,
    /// The size it may grow to (default: its size).
    #[arg(long, value_parser = parse_size)]
    max_size: Option<u64>,
    /// The allocator that manages it: bump, stack, pool, free-list, buddy,
    /// size-class or thread-local.
    #[arg(long, value_parser = parse_kind)]
    allocator: AllocatorKind,
    /// Permission bits, in octal (default 600).
    #[arg(long, value_parser = parse_mode)]
    mode: Option<u32>,
    /// Zero every block as it is freed, in every process, so freed data
    /// does not linger (the allocators that free single blocks).
    #[arg(long)]
    zero_on_free: bool,
}

fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| format!("`{text}` is not an octal mode such as 600"))
}

pub fn create(args: &CreateArgs) -> Result<ExitCode, String> {
    let mut options = SegmentOptions::shm(shm_name(&args.name)).size(args.size);
    if let Some(max) = args.max_size {
        options = options.max_size(max);
    }
    if let Some(mode) = args.mode {
        options = options.mode(mode);
    }
    options = options.zero_on_free(args.zero_on_free);
    let made = AnyAllocator::create(args.allocator, &options)
        .map_err(|e| format!("{}: {e}", args.name))?;
    println!(
        "created /{} ({}, {} allocator)",
        shm_name(&args.name),
        format_bytes(made.segment().size()),
        made.kind()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct RmArgs {
    /// The shared-memory name to remove.
    name: String,
    /// Remove it even if it is not a shmkit segment.
    #[arg(long)]
    force: bool,
}

pub fn rm(args: &RmArgs) -> Result<ExitCode, String> {
    let name = shm_name(&args.name);
    let path = Path::new(SHM_DIR).join(name);
    if !path.exists() {
        return Err(format!("{}: no such shared-memory segment", args.name));
    }
    if !args.force && !has_magic(&path) {
        return Err(format!(
            "{}: not a shmkit segment; use --force to remove it anyway",
            args.name
        ));
    }
    shmkit::segment::remove(&Location::Shm(name.to_owned()))
        .map_err(|e| format!("{}: {e}", args.name))?;
    println!("removed /{name}");
    Ok(ExitCode::SUCCESS)
}
