//! The `jobqueue` binary. So far it acts as a command's supervisor when
//! started as one (see `jobqueue_cli::command::shim`); the command line
//! comes next.

use std::process::ExitCode;

use jobqueue_cli::command::shim;

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == shim::SHIM_ARG) {
        let code = shim::main(args.collect());
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    eprintln!("jobqueue: the command line is not built yet");
    ExitCode::from(2)
}
