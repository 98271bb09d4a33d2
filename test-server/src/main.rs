//! `estuary-testserver`: the command line is in the library (`cli.rs`) so tests can reach it.

fn main() {
    std::process::exit(estuary_testserver::cli::main());
}
