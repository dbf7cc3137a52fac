// Real-data tests run when MAMMO_DATA is set at build time and are ignored
// (with a message saying so) otherwise: `cargo test` is the one test command
// both for users without the data and for CI, which sets it.
fn main() {
    println!("cargo:rustc-check-cfg=cfg(mammo_data)");
    println!("cargo:rerun-if-env-changed=MAMMO_DATA");
    if std::env::var_os("MAMMO_DATA").is_some_and(|v| !v.is_empty()) {
        println!("cargo:rustc-cfg=mammo_data");
    }
}
