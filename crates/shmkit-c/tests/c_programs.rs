//! The C programs under `tests/c/`, compiled with the system compiler and
//! run against the static library (under valgrind's memcheck when it is
//! installed: no memory error, no leak).

mod common;

use common::{assert_ok, build, have_valgrind, run, unique};

#[test]
fn every_error_path_returns_its_code_and_a_message() {
    let program = build(
        &common::repo().join("crates/shmkit-c/tests/c/errors.c"),
        &[],
    );
    let name = unique("errors");
    let output = run(&program, &[&name], false);
    let _ = shmkit::segment::remove(&shmkit::Location::Shm(name.clone()));
    let _ = shmkit::segment::remove(&shmkit::Location::Shm(format!("{name}-bump")));
    let _ = shmkit::segment::remove(&shmkit::Location::Shm(format!("{name}-queue")));
    let _ = shmkit::segment::remove(&shmkit::Location::Shm(format!("{name}-spsc")));
    assert_ok("errors.c", &output);
}

#[test]
fn the_error_paths_are_clean_under_valgrind() {
    if !have_valgrind() {
        eprintln!("valgrind is not installed: skipped");
        return;
    }
    let program = build(
        &common::repo().join("crates/shmkit-c/tests/c/errors.c"),
        &[],
    );
    let name = unique("errors-valgrind");
    let output = run(&program, &[&name], true);
    let _ = shmkit::segment::remove(&shmkit::Location::Shm(name.clone()));
    let _ = shmkit::segment::remove(&shmkit::Location::Shm(format!("{name}-bump")));
    let _ = shmkit::segment::remove(&shmkit::Location::Shm(format!("{name}-queue")));
    let _ = shmkit::segment::remove(&shmkit::Location::Shm(format!("{name}-spsc")));
    assert_ok("errors.c under valgrind", &output);
}

#[test]
fn the_cpp_header_wraps_named_objects_and_both_queues() {
    let program = build(
        &common::repo().join("crates/shmkit-c/tests/c/cpp_api.cpp"),
        &[],
    );
    let name = unique("cpp-api");
    let output = run(&program, &[&name], false);
    for suffix in ["", "-queue", "-spsc"] {
        let _ = shmkit::segment::remove(&shmkit::Location::Shm(format!("{name}{suffix}")));
    }
    assert_ok("cpp_api.cpp", &output);
}
