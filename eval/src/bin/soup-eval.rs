use clap::Parser;
use soup_eval::cli;

fn main() -> std::process::ExitCode {
    cli::main(cli::Args::parse())
}
