//! Compiles the .proto files with protox, a pure-Rust protobuf compiler, so
//! that building Shoal needs no system `protoc`; and records the git commit
//! the programs are built from, for `--version`.

use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/shoal/v1/objects.proto",
        "proto/shoal/v1/control.proto",
        "proto/shoal/v1/raft.proto",
        "proto/shoal/v1/dispatcher.proto",
        "proto/shoal/v1/ca.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_fds(descriptors)?;
    println!("cargo:rustc-env=SHOAL_GIT_COMMIT={}", git_commit());
    Ok(())
}

/// The commit of the checkout, or `SHOAL_GIT_COMMIT` when the environment
/// sets it (packagers building from a tarball), or "unknown".
fn git_commit() -> String {
    println!("cargo:rerun-if-env-changed=SHOAL_GIT_COMMIT");
    if let Ok(commit) = std::env::var("SHOAL_GIT_COMMIT") {
        return commit;
    }
    let git = |args: &[&str]| -> Option<String> {
        let output = Command::new("git").args(args).output().ok()?;
        let text = String::from_utf8(output.stdout).ok()?;
        (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
    };
    // A new commit moves the branch's ref, not HEAD: watch both so the
    // recorded commit follows.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        // Only files that exist: cargo reruns for a missing one every time.
        let mut watched = vec![format!("{dir}/HEAD"), format!("{dir}/packed-refs")];
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(format!("{dir}/{reference}"));
        }
        for path in watched.iter().filter(|p| std::path::Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
}
