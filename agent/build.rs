//! Records the target triple for `nebula-agent --version`: cargo only tells build scripts
//! which target they compile for, so it is passed on to the crate as an environment variable.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=NEBULA_BUILD_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
