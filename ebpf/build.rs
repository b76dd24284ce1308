//! Compiles the data-plane programs in `c/` into BPF objects in `OUT_DIR`.
//!
//! Each `c/<name>.bpf.c` becomes `$OUT_DIR/<name>.bpf.o`, which the loader
//! embeds. This script never installs anything: when clang or the libbpf
//! headers are missing it stops and names the Debian packages to install.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Where Debian's `libbpf-dev` puts `bpf_helpers.h`.
const LIBBPF_HELPERS: &str = "/usr/include/bpf/bpf_helpers.h";

fn main() -> Result<()> {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
    let c_dir = manifest_dir.join("c");
    let clang = std::env::var("BATON_CLANG").unwrap_or_else(|_| "clang".to_owned());

    println!("cargo:rerun-if-env-changed=BATON_CLANG");
    println!("cargo:rerun-if-changed={}", c_dir.display());

    check_toolchain(&clang)?;

    let mut sources = Vec::new();
    for entry in
        std::fs::read_dir(&c_dir).with_context(|| format!("reading {}", c_dir.display()))?
    {
        let path = entry?.path();
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".bpf.c") {
            sources.push(path);
        }
    }
    sources.sort();
    if sources.is_empty() {
        bail!("no *.bpf.c sources in {}", c_dir.display());
    }

    let multiarch = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    for source in &sources {
        compile(&clang, source, &c_dir, &multiarch, &out_dir)?;
    }
    Ok(())
}

/// Fails with the packages to install when the BPF toolchain is missing.
fn check_toolchain(clang: &str) -> Result<()> {
    let version = Command::new(clang).arg("--version").output();
    match version {
        Ok(out) if out.status.success() => {}
        _ => bail!(
            "`{clang}` was not found or does not run: the BPF programs are C compiled by clang; \
             install it with `apt-get install clang llvm` (or point BATON_CLANG at a clang binary)"
        ),
    }
    if !Path::new(LIBBPF_HELPERS).exists() {
        bail!(
            "{LIBBPF_HELPERS} is missing: the BPF programs need the libbpf headers; \
             install them with `apt-get install libbpf-dev`"
        );
    }
    Ok(())
}

fn compile(
    clang: &str,
    source: &Path,
    include: &Path,
    multiarch: &str,
    out_dir: &Path,
) -> Result<()> {
    let file_name = source
        .file_name()
        .and_then(|n| n.to_str())
        .context("source file name")?;
    let object = out_dir.join(file_name.trim_end_matches(".c").to_owned() + ".o");
    let output = Command::new(clang)
        .args([
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-mcpu=v3",
            "-Wall",
            "-Wextra",
            "-Wno-unused-parameter",
        ])
        .arg("-I")
        .arg(include)
        .arg("-I")
        .arg(multiarch)
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(&object)
        .output()
        .with_context(|| format!("running {clang} on {}", source.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("clang failed on {}:\n{stderr}", source.display());
    }
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        println!("cargo:warning={line}");
    }
    Ok(())
}
