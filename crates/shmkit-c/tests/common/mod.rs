//! Building and running the C and C++ programs of the tests: compiled with
//! the system compiler against `include/` and the static library cargo
//! built beside this test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where cargo put this test binary's libraries (`target/<profile>`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The static library cargo built for this test run: in `deps/` (where a
/// test build leaves it), else beside the profile's other outputs.
pub fn static_library() -> PathBuf {
    let in_deps = profile_dir().join("deps/libshmkit_c.a");
    if in_deps.exists() {
        in_deps
    } else {
        profile_dir().join("libshmkit_c.a")
    }
}

/// Compiles `source` (C, or C++ when it ends in `.cpp`) into a program in
/// this test's scratch directory, once per test binary (tests that share a
/// program wait for one build); panics with the compiler's output when it
/// fails.
pub fn build(source: &Path, extra: &[&str]) -> PathBuf {
    static BUILT: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, program)) = built.iter().find(|(s, _)| s == source) {
        return program.clone();
    }
    let program = compile(source, extra);
    built.push((source.to_path_buf(), program.clone()));
    program
}

fn compile(source: &Path, extra: &[&str]) -> PathBuf {
    let cpp = source.extension().is_some_and(|e| e == "cpp");
    let compiler = if cpp { "c++" } else { "cc" };
    let standard = if cpp { "-std=c++17" } else { "-std=c11" };
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c-programs");
    std::fs::create_dir_all(&out_dir).unwrap();
    let program = out_dir.join(source.file_stem().unwrap());
    let output = Command::new(compiler)
        .args([standard, "-O2", "-g", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(repo().join("include"))
        .arg(source)
        .args(extra)
        .arg(static_library())
        .args(shmkit_c::STATIC_LINK_LIBS)
        .arg("-o")
        .arg(&program)
        .output()
        .unwrap_or_else(|e| panic!("running {compiler}: {e}"));
    assert!(
        output.status.success(),
        "{compiler} {}:\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    program
}

/// Whether valgrind is installed.
pub fn have_valgrind() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `program` with `args`, under valgrind's memcheck when `valgrind`
/// (any memory error, or a definite or indirect leak, exits 99).
pub fn run(program: &Path, args: &[&str], valgrind: bool) -> Output {
    let mut command = if valgrind {
        let mut command = Command::new("valgrind");
        command.args([
            "--quiet",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect",
        ]);
        command.arg(program);
        command
    } else {
        Command::new(program)
    };
    command.args(args).output().unwrap()
}

/// A name no other test or run uses.
pub fn unique(label: &str) -> String {
    format!("shmkit-c-{label}-{}", std::process::id())
}

/// Panics with the program's output unless it succeeded.
pub fn assert_ok(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what}: {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Removes a shm segment's name when dropped (a test's cleanup, also when
/// it fails).
pub struct Unlink(pub String);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = shmkit::segment::remove(&shmkit::Location::Shm(self.0.clone()));
    }
}

/// The bytes of a message a queue checked (raw bytes, not a pickle).
pub fn message_bytes(message: shmkit::Result<(shmkit::FullPtr<u8>, usize, bool)>) -> Vec<u8> {
    let (block, len, pickled) = message.unwrap();
    assert!(!pickled, "a raw message");
    // SAFETY: a live message block of `len` bytes, not freed meanwhile.
    unsafe { std::slice::from_raw_parts(block.as_ptr(), len) }.to_vec()
}
