use clap::Parser;
use model_soup::eval::cli;

fn main() -> std::process::ExitCode {
    cli::main(cli::Args::parse())
}
