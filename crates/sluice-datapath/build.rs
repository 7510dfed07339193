//! Compiles every `bpf/*.bpf.c` with clang-19 into OUT_DIR; the crate embeds the objects.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const CLANG: &str = "clang-19";

fn main() {
    let bpf_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bpf");
    let bpf_dir = bpf_dir
        .canonicalize()
        .expect("bpf/ directory next to crates/");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    for entry in walk(&bpf_dir) {
        println!("cargo:rerun-if-changed={}", entry.display());
    }

    for object in ["endpoint", "overlay", "host", "sock"] {
        let source = bpf_dir.join(format!("{object}.bpf.c"));
        let output = out_dir.join(format!("{object}.bpf.o"));
        let status = Command::new(CLANG)
            .args([
                "-O2",
                "-g",
                "-target",
                "bpf",
                "-D__TARGET_ARCH_x86",
                "-Wall",
                "-Werror",
            ])
            .arg("-I")
            .arg(&bpf_dir)
            .arg("-I")
            .arg(bpf_dir.join("include"))
            .args(["-I", "/usr/include/x86_64-linux-gnu", "-c"])
            .arg(&source)
            .arg("-o")
            .arg(&output)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {CLANG} ({e}): install it with `make deps` (apt package clang-19)"
                )
            });
        assert!(
            status.success(),
            "{CLANG} failed to compile {}",
            source.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
