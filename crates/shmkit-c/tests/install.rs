//! `scripts/install-c` installs what a C or C++ project needs, and
//! `pkg-config` (shared and static) and CMake's `find_package(shmkit)`
//! (when cmake is installed) build against the installed copy.

mod common;

use std::path::Path;
use std::process::Command;

use common::{assert_ok, profile_dir, repo, unique};

fn install(prefix: &Path) {
    let lib_dir = profile_dir().join("deps");
    let output = Command::new("bash")
        .arg(repo().join("scripts/install-c"))
        .env("PREFIX", prefix)
        .env("LIB_DIR", &lib_dir)
        .output()
        .unwrap();
    assert_ok("scripts/install-c", &output);
    for file in [
        "lib/libshmkit_c.a",
        "lib/libshmkit_c.so",
        "include/shmkit.h",
        "include/shmkit.hpp",
        "lib/pkgconfig/shmkit.pc",
        "lib/cmake/shmkit/shmkitConfig.cmake",
        "lib/cmake/shmkit/shmkitConfigVersion.cmake",
    ] {
        assert!(prefix.join(file).exists(), "{file} was not installed");
    }
}

fn pkg_config(prefix: &Path, args: &[&str]) -> Vec<String> {
    let output = Command::new("pkg-config")
        .args(args)
        .arg("shmkit")
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
        .output()
        .unwrap();
    assert_ok("pkg-config", &output);
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn pkg_config_builds_the_hello_example_shared_and_static() {
    if Command::new("pkg-config")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("pkg-config is not installed: skipped");
        return;
    }
    let prefix = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("install"));
    let _ = std::fs::remove_dir_all(&prefix);
    install(&prefix);
    let source = repo().join("crates/shmkit-c/examples/c/hello.c");
    for (label, flags) in [
        ("shared", pkg_config(&prefix, &["--cflags", "--libs"])),
        ("static", {
            let mut flags = pkg_config(&prefix, &["--cflags"]);
            flags.push(prefix.join("lib/libshmkit_c.a").display().to_string());
            flags.extend(
                pkg_config(&prefix, &["--libs", "--static"])
                    .into_iter()
                    .filter(|f| f != "-lshmkit_c"),
            );
            flags
        }),
    ] {
        let program = prefix.join(format!("hello-{label}"));
        let built = Command::new("cc")
            .arg(&source)
            .args(&flags)
            .arg("-o")
            .arg(&program)
            .output()
            .unwrap();
        assert_ok(&format!("cc hello.c ({label})"), &built);
        let ran = Command::new(&program)
            .arg(unique(&format!("hello-{label}")))
            .env("LD_LIBRARY_PATH", prefix.join("lib"))
            .output()
            .unwrap();
        assert_ok(&format!("hello ({label})"), &ran);
        assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), "hello from C");
    }
    let _ = std::fs::remove_dir_all(&prefix);
}

#[test]
fn cmake_finds_the_installed_package() {
    if Command::new("cmake").arg("--version").output().is_err() {
        eprintln!("cmake is not installed: skipped");
        return;
    }
    let prefix = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("install-cmake"));
    let _ = std::fs::remove_dir_all(&prefix);
    install(&prefix);
    let project = prefix.join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("CMakeLists.txt"),
        format!(
            "cmake_minimum_required(VERSION 3.10)\nproject(hello C)\nfind_package(shmkit REQUIRED)\n\
             add_executable(hello {})\ntarget_link_libraries(hello shmkit::shmkit)\n",
            repo().join("crates/shmkit-c/examples/c/hello.c").display()
        ),
    )
    .unwrap();
    let build = project.join("build");
    let configured = Command::new("cmake")
        .arg("-S")
        .arg(&project)
        .arg("-B")
        .arg(&build)
        .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
        .output()
        .unwrap();
    assert_ok("cmake configure", &configured);
    let built = Command::new("cmake")
        .arg("--build")
        .arg(&build)
        .output()
        .unwrap();
    assert_ok("cmake --build", &built);
    let ran = Command::new(build.join("hello"))
        .arg(unique("hello-cmake"))
        .env("LD_LIBRARY_PATH", prefix.join("lib"))
        .output()
        .unwrap();
    assert_ok("hello (cmake)", &ran);
    assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), "hello from C");
    let _ = std::fs::remove_dir_all(&prefix);
}
