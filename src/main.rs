use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().map(|a| a.rsplit('/').next().unwrap_or(a).to_string()).unwrap_or_default();
    if argv0.starts_with("mount.fuse.clonefs") || argv0.starts_with("mount.clonefs") {
        return clonefs::cli::mount_helper(args);
    }
    clonefs::cli::main_with(clonefs::cli::Cli::parse())
}
