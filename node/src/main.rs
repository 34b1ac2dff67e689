//! `fogmesh`: the one binary every device runs. The command line lives in the library
//! ([`fogmesh_node::cli`]).

fn main() -> std::process::ExitCode {
    fogmesh_node::cli::main()
}
