use clap::Parser;
use model_soup::cli::merge;

fn main() -> std::process::ExitCode {
    merge::main(merge::Args::parse())
}
