//! The `agentkernel` binary: parse, run, exit. Everything else is in the library.

#![forbid(unsafe_code)]

use agentkernel::cli;
use agentkernel::config::ProcessEnvironment;

fn main() {
    let command = match cli::parse(std::env::args_os().skip(1), &ProcessEnvironment) {
        Ok(command) => command,
        Err(error) => {
            eprintln!(
                "agentkernel: {}\nUsage: {}\nTry 'agentkernel --help' for more.",
                error.message, error.usage
            );
            std::process::exit(2);
        }
    };
    cli::init_logging(command.log_level(&ProcessEnvironment));
    std::process::exit(cli::run(command));
}
