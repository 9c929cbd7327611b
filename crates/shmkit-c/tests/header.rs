//! `include/shmkit.h` is generated from this crate; this test fails when
//! the checked-in header differs from what cbindgen makes now (run it with
//! `SHMKIT_BLESS=1` to rewrite the header).

use std::path::Path;

#[test]
fn the_checked_in_header_is_current() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen reads the crate")
        .write(&mut generated);
    let generated = String::from_utf8(generated).unwrap();
    let path = crate_dir.join("../../include/shmkit.h");
    if std::env::var_os("SHMKIT_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/shmkit.h is stale: run `SHMKIT_BLESS=1 cargo test -p shmkit-c --test header` \
         and commit the result"
    );
}
