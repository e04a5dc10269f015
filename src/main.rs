//! The `agentkernel` binary: parse, run, exit. Everything else is in the library.

#![forbid(unsafe_code)]

use agentkernel::cli;

fn main() {
    cli::init_logging();
    let command = match cli::parse(
        std::env::args_os().skip(1),
        &agentkernel::config::ProcessEnvironment,
    ) {
        Ok(command) => command,
        Err(cli::UsageError(message)) => {
            eprintln!("agentkernel: {message}\n\n{}", cli::USAGE);
            std::process::exit(2);
        }
    };
    std::process::exit(cli::run(command));
}
