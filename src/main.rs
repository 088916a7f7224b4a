#[global_allocator]
static GLOBAL: stepstone::mem::Allocator = stepstone::mem::Allocator;

fn main() {
    // before anything that may use OpenSSL; if it already has, it keeps its allocator
    let _ = stepstone::mem::openssl_on_mimalloc();
    stepstone::mem::return_freed_memory();
    std::process::exit(stepstone::cli::main());
}
