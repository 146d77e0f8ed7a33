use model_soup::cli::{merge, parse_args};

fn main() -> std::process::ExitCode {
    merge::main(parse_args())
}
