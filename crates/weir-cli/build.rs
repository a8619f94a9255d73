// Every step runs in a fresh `weir exec` process, so start-up time is paid
// once per step. As a position-independent executable the binary needs about
// 75,000 relocations at each start, which touch (and copy) hundreds of pages:
// 0.6 ms of a step's overhead. A fixed-address executable starts without
// them; shared libraries are still loaded at random addresses.
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
