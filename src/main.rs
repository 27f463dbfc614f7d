//! `rcops`: parse the command line, set up logging, dispatch, and turn the outcome into an
//! exit code (0 ok, 1 warnings/findings, 2 critical/failed, 64 usage). Nothing else.

mod cli;
mod cmd;
mod output;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ExitCode::from(64),
                _ => ExitCode::from(output::EXIT_USAGE),
            };
        }
    };
    output::init_tracing(cli.global.verbose);
    // One thread: the fan-outs are I/O-bound, and for `bench` a profile showed most client
    // time in cross-thread wakeups (futex) when clients ran on a worker per core.
    let mut builder = tokio::runtime::Builder::new_current_thread();
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rcops: error: cannot start the async runtime: {e}");
            return ExitCode::from(output::EXIT_FAILED);
        }
    };
    let code = runtime.block_on(cmd::run(cli));
    // Every result is printed and every task that writes is awaited by now: exit without
    // tearing down the runtime, whose connection tasks (120 for a big cluster) would each be
    // dropped and deregistered one by one; the kernel closes the sockets.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(i32::from(code))
}
