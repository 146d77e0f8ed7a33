use model_soup::cli::parse_args;
use soup_eval::cli;

fn main() -> std::process::ExitCode {
    cli::main(parse_args())
}
