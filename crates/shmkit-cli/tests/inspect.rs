//! `shmkit ls`, `stat`, `check`, `map`, `create` and `rm` against real
//! segments, a deliberately corrupted one and foreign files.

use std::path::Path;
use std::process::{Command, Output};

use shmkit::{FreeListAllocator, SegmentAllocator, SegmentOptions, ShmAllocator};

fn shmkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shmkit"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A fresh shared-memory name, removed (whatever is there) on drop.
struct Name(String);

impl Name {
    fn new(tag: &str) -> Name {
        Name(format!("shmkit-cli-{tag}-{}", std::process::id()))
    }
    fn path(&self) -> String {
        format!("/dev/shm/{}", self.0)
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path());
    }
}

fn create(name: &Name, size: &str, allocator: &str) {
    let out = shmkit(&["create", &name.0, "--size", size, "--allocator", allocator]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        "ls", "stat", "check", "map", "create", "rm", "demo", "bench", "recover",
    ] {
        let out = shmkit(&[sub, "--help"]);
        assert!(out.status.success(), "{sub}");
        assert!(stdout(&out).contains("Usage"), "{sub}: {}", stdout(&out));
    }
}

/// The row `shmkit ls --json` gives for `name`.
fn ls_json_row(name: &Name) -> serde_json::Value {
    let out = shmkit(&["ls", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|row| row["name"] == name.0.as_str())
        .cloned()
        .expect("listed in JSON")
}

#[test]
fn ls_lists_shmkit_segments_and_skips_foreign_files() {
    let ours = Name::new("ls");
    let foreign = Name::new("ls-foreign");
    let empty = Name::new("ls-empty");
    create(&ours, "4MiB", "size-class");
    std::fs::write(foreign.path(), b"someone else's bytes").unwrap();
    std::fs::write(empty.path(), b"").unwrap();
    let out = shmkit(&["ls"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let row = text
        .lines()
        .find(|l| l.starts_with(&ours.0))
        .expect("our segment listed");
    assert!(
        row.contains("size-class") && row.contains("4.0 MiB"),
        "{row}"
    );
    assert!(
        !text.contains(&foreign.0) && !text.contains(&empty.0),
        "{text}"
    );
    // The same as JSON, for scripts.
    let row = ls_json_row(&ours);
    assert_eq!(row["allocator"], "size-class");
    assert_eq!(
        row["creator_alive"], false,
        "the creating command has exited"
    );
    assert_eq!(
        row["format_version"],
        shmkit::segment::header::FORMAT_VERSION
    );
}

#[test]
fn stat_reports_the_accounting_of_live_blocks() {
    let name = Name::new("stat");
    create(&name, "2MiB", "free-list");
    let heap = FreeListAllocator::attach(&SegmentOptions::shm(&name.0)).unwrap();
    for size in [100, 200, 300] {
        heap.allocate(size).unwrap();
    }
    let out = shmkit(&["stat", &name.0, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["allocator"], "free-list");
    assert_eq!(report["live_allocations"], 3);
    assert_eq!(report["allocated_bytes"], 600);
    assert_eq!(report["size"], 2 << 20);
    assert_eq!(report["zero_on_free"], false);
    let text = stdout(&shmkit(&["stat", &name.0]));
    assert!(text.contains("live allocations   3"), "{text}");

    let zeroing = Name::new("stat-zero");
    let out = shmkit(&[
        "create",
        &zeroing.0,
        "--size",
        "1MiB",
        "--allocator",
        "pool",
        "--zero-on-free",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&shmkit(&["stat", &zeroing.0, "--json"]).stdout).unwrap();
    assert_eq!(report["zero_on_free"], true, "{report}");
}

#[test]
fn stat_lists_named_objects_and_never_creates_a_directory() {
    let name = Name::new("stat-named");
    create(&name, "2MiB", "size-class");
    let bare = shmkit(&["stat", &name.0, "--json"]);
    assert!(bare.status.success(), "{}", stderr(&bare));
    let report: serde_json::Value = serde_json::from_slice(&bare.stdout).unwrap();
    assert_eq!(report["named_objects"], serde_json::json!([]));
    assert_eq!(report["roots"], serde_json::json!([]), "stat wrote a root");

    let heap = shmkit::SizeClassAllocator::attach(&SegmentOptions::shm(&name.0)).unwrap();
    let names = shmkit::named::NamedObjects::open(&heap).unwrap();
    names.construct("answer", 42u64).unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&shmkit(&["stat", &name.0, "--json"]).stdout).unwrap();
    let listed = &report["named_objects"][0];
    assert_eq!(listed["name"], "answer", "{report}");
    assert_eq!(listed["type"], "u64");
    assert_eq!(listed["size"], 8);
    let text = stdout(&shmkit(&["stat", &name.0]));
    assert!(text.contains("named object       answer"), "{text}");
}

#[test]
fn check_passes_a_sound_segment_and_fails_a_corrupted_one() {
    let name = Name::new("check");
    create(&name, "1MiB", "free-list");
    let heap = FreeListAllocator::attach(&SegmentOptions::shm(&name.0)).unwrap();
    let block = heap.allocate(64).unwrap();
    let out = shmkit(&["check", &name.0]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("sound"));
    // Scribble over the block's boundary tag, just below the block.
    // SAFETY: our own live block; the 32 bytes before it are its header.
    unsafe { std::ptr::write_bytes(block.as_ptr().sub(32), 0xA5, 32) };
    let out = shmkit(&["check", &name.0]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    let message = stderr(&out);
    assert_eq!(message.lines().count(), 1, "one line: {message}");
    assert!(message.contains(&name.0), "{message}");
    let out = shmkit(&["check", &name.0, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sound"], false);
    assert!(report["error"].as_str().is_some());
    // `map` still draws the segment, in proportion, and says why.
    let out = shmkit(&["map", &name.0]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("the region walk failed"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn map_draws_used_and_free_regions_and_writes_svg() {
    let name = Name::new("map");
    create(&name, "4MiB", "size-class");
    let heap = shmkit::SizeClassAllocator::attach(&SegmentOptions::shm(&name.0)).unwrap();
    for _ in 0..2000 {
        heap.allocate(512).unwrap();
    }
    let svg = std::env::temp_dir().join(format!("{}.svg", name.0));
    let out = shmkit(&["map", &name.0, "--width", "40", "--rows", "4", "--svg"])
        .status
        .code();
    assert_eq!(out, Some(2), "--svg needs a file");
    let out = shmkit(&[
        "map",
        &name.0,
        "--width",
        "40",
        "--rows",
        "4",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let strip: Vec<&str> = text.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(strip.len(), 4, "{text}");
    let cells: String = strip.concat().replace('|', "");
    // About 1 MiB of 4 MiB is in use: a quarter of the 160 cells.
    let used = cells.chars().filter(|&c| c != '.').count();
    assert!((35..=50).contains(&used), "{used} used cells: {text}");
    assert!(cells.contains('.'), "free pages show: {text}");
    let picture = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_file(&svg);
    assert!(picture.starts_with("<svg") && picture.trim_end().ends_with("</svg>"));
    assert!(picture.matches("<rect").count() >= 2, "{picture}");
}

/// The cells of `shmkit map`'s strip that show some use, and the strip.
fn map_used_cells(name: &Name) -> (usize, String) {
    let out = shmkit(&["map", &name.0, "--width", "40", "--rows", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains("proportional"), "a region walk: {text}");
    let strip: Vec<&str> = text.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(strip.len(), 4, "{text}");
    let cells: String = strip.concat().replace('|', "");
    (cells.chars().filter(|&c| c != '.').count(), text)
}

#[test]
fn map_walks_pool_and_buddy_segments() {
    let pool = Name::new("map-pool");
    create(&pool, "4MiB", "pool");
    let heap = shmkit::PoolAllocator::attach(&SegmentOptions::shm(&pool.0)).unwrap();
    let (used, text) = map_used_cells(&pool);
    assert_eq!(used, 0, "a fresh pool: {text}");
    assert!(text.contains("0 B in use in 1 regions"), "{text}");
    // 1000 256-byte slots: a quarter MiB of 4 MiB, a few of 160 cells.
    let blocks: Vec<_> = (0..1000).map(|_| heap.allocate(200).unwrap()).collect();
    let (used, text) = map_used_cells(&pool);
    assert!((8..=14).contains(&used), "{used} used cells: {text}");
    for block in blocks.iter().step_by(2) {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(*block) }.unwrap();
    }
    let (half, text) = map_used_cells(&pool);
    assert!((2..=used).contains(&half), "{half} used cells: {text}");
    assert!(text.contains("125.0 KiB in use"), "500 live slots: {text}");

    let buddy = Name::new("map-buddy");
    create(&buddy, "4MiB", "buddy");
    let heap = shmkit::BuddyAllocator::attach(&SegmentOptions::shm(&buddy.0)).unwrap();
    let (used, text) = map_used_cells(&buddy);
    assert_eq!(used, 0, "a fresh buddy heap: {text}");
    // 256 blocks of 4 KiB: 1 MiB of 4 MiB, about a quarter of the cells.
    for _ in 0..256 {
        heap.allocate(3000).unwrap();
    }
    let (used, text) = map_used_cells(&buddy);
    assert!((35..=50).contains(&used), "{used} used cells: {text}");
    assert!(text.contains("1.0 MiB in use"), "{text}");
}

#[test]
fn create_refuses_an_existing_name_and_rm_refuses_foreign_files() {
    let name = Name::new("rm");
    create(&name, "1MiB", "bump");
    let again = shmkit(&["create", &name.0, "--size", "1MiB", "--allocator", "bump"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    let bad = shmkit(&["create", &name.0, "--size", "lots", "--allocator", "bump"]);
    assert_eq!(bad.status.code(), Some(2), "bad usage");

    let foreign = Name::new("rm-foreign");
    std::fs::write(foreign.path(), b"not ours").unwrap();
    let out = shmkit(&["rm", &foreign.0]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert!(
        Path::new(&foreign.path()).exists(),
        "a refused rm keeps the file"
    );
    assert!(shmkit(&["rm", &foreign.0, "--force"]).status.success());
    assert!(!Path::new(&foreign.path()).exists());

    assert!(shmkit(&["rm", &name.0]).status.success());
    assert!(!Path::new(&name.path()).exists());
    let missing = shmkit(&["stat", &name.0]);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(stderr(&missing).lines().count(), 1, "{}", stderr(&missing));
}

/// Runs `shmkit` as the unprivileged user `nobody`, when this test runs as
/// root (else `None`: the permission cases need two users).
fn as_nobody(args: &[&str]) -> Option<Output> {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the permission cases need root to run shmkit as `nobody`");
        return None;
    }
    Some(
        Command::new(env!("CARGO_BIN_EXE_shmkit"))
            .args(args)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap(),
    )
}

#[test]
fn another_users_segments_are_listed_with_owner_and_marked_unreadable() {
    let private = Name::new("ls-private");
    let shared = Name::new("ls-readable");
    create(&private, "1MiB", "free-list");
    let out = shmkit(&[
        "create", &shared.0, "-s", "1MiB", "-a", "pool", "--mode", "644",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let Some(out) = as_nobody(&["ls", "--json"]) else {
        return;
    };
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |name: &Name| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name.0.as_str())
            .unwrap_or_else(|| panic!("{} not listed: {rows}", name.0))
            .clone()
    };
    let private_row = row(&private);
    assert_eq!(private_row["owner"], "root");
    assert_eq!(private_row["mode"], "600");
    assert_eq!(private_row["state"], "unreadable");
    assert_eq!(private_row["file_size"].as_u64(), Some(1 << 20));
    let shared_row = row(&shared);
    assert_eq!(shared_row["state"], "read-only");
    assert_eq!(shared_row["allocator"], "pool");
    // The table says the same.
    let out = as_nobody(&["ls"]).unwrap();
    let text = stdout(&out);
    let line = text.lines().find(|l| l.starts_with(&private.0)).unwrap();
    assert!(
        line.contains("root") && line.contains("rw-------") && line.ends_with("unreadable"),
        "{line}"
    );
}

#[test]
fn stat_needs_read_access_only_and_rm_says_permission() {
    let shared = Name::new("stat-readable");
    let private = Name::new("rm-private");
    let out = shmkit(&[
        "create",
        &shared.0,
        "-s",
        "1MiB",
        "-a",
        "size-class",
        "-m",
        "644",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    create(&private, "1MiB", "buddy");
    let Some(out) = as_nobody(&["stat", &shared.0]) else {
        return;
    };
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("read-only") && text.contains("size-class"),
        "{text}"
    );
    let out = as_nobody(&["stat", &shared.0, "--json"]).unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["access"], "read-only");
    assert_eq!(report["size"].as_u64(), Some(1 << 20));

    let out = as_nobody(&["rm", &private.0]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("not a shmkit segment"),
        "{}",
        stderr(&out)
    );
    assert!(Path::new(&private.path()).exists());
}

#[test]
fn an_empty_file_is_not_called_a_segment_being_created() {
    let empty = Name::new("empty");
    std::fs::write(empty.path(), b"").unwrap();
    for sub in ["stat", "check"] {
        let out = shmkit(&[sub, &empty.0]);
        assert_eq!(out.status.code(), Some(1), "{sub}");
        assert!(
            stderr(&out).contains("not a shmkit segment (an empty file)"),
            "{sub}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn create_and_rm_speak_json_and_help_lists_the_exit_codes() {
    let name = Name::new("json");
    let out = shmkit(&[
        "create",
        &name.0,
        "-s",
        "2MiB",
        "-a",
        "thread-local",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["created"], name.0.as_str());
    assert_eq!(created["allocator"], "thread-local");
    assert_eq!(created["size"].as_u64(), Some(2 << 20));
    let out = shmkit(&["rm", &name.0, "-j"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let removed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(removed["removed"], name.0.as_str());
    for help in [vec!["--help"], vec!["ls", "--help"], vec!["demo", "--help"]] {
        let text = stdout(&shmkit(&help));
        assert!(
            text.contains("Exit codes:") && text.contains("143"),
            "{help:?}: {text}"
        );
    }
}

#[test]
fn create_backs_memory_as_the_segment_fills_unless_asked_to_commit() {
    for (flags, eager) in [(vec![], false), (vec!["--commit-upfront"], true)] {
        let name = Name::new(if eager { "eager" } else { "lazy" });
        let mut args = vec!["create", &name.0, "-s", "256MiB", "-a", "buddy", "-j"];
        args.extend(flags);
        let out = shmkit(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(created["size"].as_u64(), Some(256 << 20));
        let backed = created["backed"].as_u64().unwrap();
        let on_disk =
            std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(name.path()).unwrap()) * 512;
        if eager {
            assert!(backed >= 256 << 20, "{created}");
        } else {
            assert!(backed <= 8 << 20, "{created}");
        }
        let row = ls_json_row(&name);
        assert_eq!(row["backed"].as_u64(), Some(on_disk), "{row}");
    }
}

#[test]
fn long_names_keep_the_columns_straight() {
    let long = Name(format!(
        "shmkit-cli-a-rather-long-segment-name-for-columns-{}",
        std::process::id()
    ));
    create(&long, "1MiB", "bump");
    let short = Name::new("col");
    create(&short, "1MiB", "bump");
    let text = stdout(&shmkit(&["ls"]));
    let header = text.lines().next().unwrap();
    let column = header.find("OWNER").unwrap();
    // Both rows have their owner right under OWNER, whatever their names'
    // lengths.
    let owners: Vec<&str> = [&long, &short]
        .iter()
        .map(|name| {
            let line = text.lines().find(|l| l.starts_with(&name.0)).unwrap();
            assert_eq!(line.as_bytes()[column - 1], b' ', "{text}");
            line[column..].split_whitespace().next().unwrap()
        })
        .collect();
    assert_eq!(owners[0], owners[1], "{text}");
    assert!(!owners[0].is_empty() && owners[0] != "-", "{text}");
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    let name = Name::new("pipe");
    create(&name, "1MiB", "size-class");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmkit"))
        .args(["stat", &name.0])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end at once, as `| head -0` would.
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_svg_of_a_fragmented_free_list_shows_the_holes_with_an_axis_and_a_legend() {
    let name = Name::new("map-fragments");
    let heap = FreeListAllocator::create(&SegmentOptions::shm(&name.0).size(4 << 20)).unwrap();
    let blocks: Vec<_> = (0..18_000).map(|_| heap.allocate(64).unwrap()).collect();
    for block in blocks.iter().step_by(2) {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(*block) }.unwrap();
    }
    let svg = std::env::temp_dir().join(format!("{}.svg", name.0));
    let out = shmkit(&["map", &name.0, "--svg", svg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let picture = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_file(&svg);
    let rects = picture.matches("<rect").count();
    // One rectangle per run of a shade, at most a pixel each: bounded by
    // the picture, not by the 18,000 blocks.
    assert!(rects < 16 * 1024 + 10, "{rects} rectangles");
    assert!(picture.len() < 3 << 20, "{} bytes of SVG", picture.len());
    // Half-used pixels where every other block is free, not one grey.
    let shades = titles(&picture);
    assert!(
        shades
            .iter()
            .any(|(_, meaning)| meaning.starts_with("under") || meaning.starts_with("over")),
        "{picture:.2000}"
    );
    // The offset axis starts at the data area; the legend names the shades.
    let data_offset = heap.segment().data_offset();
    assert!(
        picture.contains(&format!(">{data_offset}</text>")),
        "{picture:.2000}"
    );
    for meaning in ["free", "full"] {
        assert!(picture.contains(&format!(">{meaning}</text>")), "{meaning}");
    }
}

#[test]
fn the_strip_is_coloured_only_when_asked_or_on_a_terminal_without_no_color() {
    let name = Name::new("map-colour");
    create(&name, "1MiB", "size-class");
    let coloured = |args: &[&str], no_color: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shmkit"));
        command.args(["map", &name.0]).args(args);
        if no_color {
            command.env("NO_COLOR", "1");
        }
        stdout(&command.output().unwrap()).contains('\x1b')
    };
    assert!(coloured(&["--color", "always"], false));
    assert!(
        coloured(&["--color", "always"], true),
        "an explicit flag wins"
    );
    assert!(!coloured(&["--color", "never"], false));
    assert!(!coloured(&[], false), "not a terminal");
    assert!(!coloured(&["--no-color", "--color", "always"], false));
}

#[test]
fn map_speaks_json_region_by_region() {
    let name = Name::new("map-json");
    let heap = FreeListAllocator::create(&SegmentOptions::shm(&name.0).size(1 << 20)).unwrap();
    let kept = heap.allocate(1000).unwrap();
    let out = shmkit(&["map", &name.0, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["allocator"], "free-list");
    assert!(report["walk_error"].is_null());
    let regions = report["regions"].as_array().unwrap();
    let ours = regions
        .iter()
        .find(|r| r["used"].as_u64().unwrap() > 0)
        .expect("a used region");
    assert!(ours["len"].as_u64().unwrap() >= 1000);
    assert!(ours["offset"].as_u64().unwrap() <= kept.offset().raw());
}

/// The SVG's runs: (first offset, what its shade means), from the titles.
fn titles(picture: &str) -> Vec<(u64, String)> {
    picture
        .split("<title>offsets ")
        .skip(1)
        .map(|rest| {
            let (range, rest) = rest.split_once(": ").unwrap();
            let meaning = rest.split("</title>").next().unwrap().to_owned();
            (range.split("..").next().unwrap().parse().unwrap(), meaning)
        })
        .collect()
}

#[test]
fn each_svg_row_shows_its_own_slice() {
    // One used block at the start of a 4 MiB free list: past the first
    // row, every pixel is free (a row once drew the regions before it).
    let name = Name::new("map-rows");
    let heap = FreeListAllocator::create(&SegmentOptions::shm(&name.0).size(4 << 20)).unwrap();
    let _kept = heap.allocate(4096).unwrap();
    let svg = std::env::temp_dir().join(format!("{}.svg", name.0));
    let out = shmkit(&["map", &name.0, "--svg", svg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let picture = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_file(&svg);
    let start = heap.segment().data_offset();
    let row = (heap.segment().size() - start).div_ceil(16);
    let runs = titles(&picture);
    assert!(runs
        .iter()
        .any(|(from, meaning)| *from < start + row && meaning != "free"));
    for (from, meaning) in runs.iter().filter(|(from, _)| *from >= start + row) {
        assert_eq!(meaning, "free", "the run at {from}");
    }
}

#[test]
fn a_fifo_or_a_path_outside_the_directory_is_refused_without_blocking() {
    let fifo = Name::new("fifo");
    let path = std::ffi::CString::new(fifo.path()).unwrap();
    // SAFETY: a NUL-terminated path; mkfifo only creates it.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    for sub in ["stat", "check", "rm"] {
        let out = shmkit(&[sub, &fifo.0]);
        assert_eq!(out.status.code(), Some(1), "{sub}");
        assert!(
            stderr(&out).contains("not a shmkit segment"),
            "{sub}: {}",
            stderr(&out)
        );
    }
    let out = shmkit(&["stat", "../../dev/zero"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a shared-memory name"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn eight_zero_bytes_are_not_a_segment_being_created() {
    // A POSIX semaphore at 0 (32 bytes, the first 8 zero).
    let semaphore = Name::new("sem-like");
    std::fs::write(semaphore.path(), [0u8; 32]).unwrap();
    let out = shmkit(&["rm", &semaphore.0]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a shmkit segment"),
        "{}",
        stderr(&out)
    );
    assert!(Path::new(&semaphore.path()).exists());
    // Whole zero pages: a segment being made; rm wants --force for it.
    let making = Name::new("being-made");
    std::fs::write(making.path(), vec![0u8; 8192]).unwrap();
    let out = shmkit(&["stat", &making.0]);
    assert!(
        stderr(&out).contains("still being created"),
        "{}",
        stderr(&out)
    );
    let out = shmkit(&["rm", &making.0]);
    assert_eq!(out.status.code(), Some(1));
    assert!(shmkit(&["rm", &making.0, "--force"]).status.success());
}
