//! The `jobqueue` binary: parses the command line and runs it (see
//! `jobqueue_cli::cli`), or acts as a command's supervisor when started as
//! one (see `jobqueue_cli::command::shim`).

use std::process::ExitCode;

use clap::Parser;
use jobqueue_cli::cli::{Cli, Command};
use jobqueue_cli::command::shim;

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == shim::SHIM_ARG) {
        let code = shim::main(args.collect());
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Serve(_)));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(jobqueue_cli::cli::run(cli))
}

/// Logs go to stderr. The level comes from `JOBQUEUE_LOG` (like
/// `info,jobqueue::command=debug`), by default `info` for the server and
/// `warn` for the client commands. Colours only on a terminal.
fn init_logging(server: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = if server { "info" } else { "warn" };
    let filter = match std::env::var("JOBQUEUE_LOG") {
        Ok(s) => s.parse::<Targets>().unwrap_or_else(|e| {
            eprintln!(
                "jobqueue: JOBQUEUE_LOG={s:?} is not a log filter ({e}); logging at {default}"
            );
            default.parse().unwrap_or_default()
        }),
        Err(_) => default.parse().unwrap_or_default(),
    };
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(filter)
        .try_init();
}
