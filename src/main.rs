#[global_allocator]
static GLOBAL: stepstone::mem::Allocator = stepstone::mem::Allocator;

fn main() {
    stepstone::mem::return_freed_memory();
    std::process::exit(stepstone::cli::main());
}
