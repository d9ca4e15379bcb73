//! The command line: every command and flag, parsed with clap, and the
//! dispatch to the server, the config check and the client commands.
//!
//! Exit status: 0 on success, 1 when a command fails (an error answer of
//! the server, a server that cannot be reached, a config with errors), 2
//! for a command line that cannot be parsed.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::client::{self, Client, CommandError, JobsQuery, NewJob, TailQuery};
use crate::config::Config;
use crate::server::{self, ServeOptions};

/// The default server URL of the client commands.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7700";

/// A durable job server whose pipeline phases are commands, and its client.
#[derive(Debug, Parser)]
#[command(name = "jobqueue", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the built-in `demo` pipeline without --config).
    Serve(ServeArgs),
    /// Check a config file; print every error with its place.
    CheckConfig {
        /// The config file (TOML).
        file: PathBuf,
    },
    /// Enqueue a job; prints its id.
    Enqueue(EnqueueArgs),
    /// List jobs, newest first.
    Jobs(JobsArgs),
    /// Show a job with its phases.
    Show(IdArgs),
    /// Cancel a job (a running one is told to stop).
    Cancel(IdArgs),
    /// Retry a failed or cancelled job from its first phase not completed.
    Retry(IdArgs),
    /// Follow the events of a job, or of every job, as they happen.
    Tail(TailArgs),
    /// List the server's pipelines, each with whether it is paused.
    Pipelines(ClientArgs),
    /// Pause a pipeline: its queued jobs wait until it is resumed (running
    /// ones finish); enqueueing goes on.
    Pause(PipelineArgs),
    /// Resume a paused pipeline: its queued jobs run again.
    Resume(PipelineArgs),
}

/// `serve`'s flags; each overrides the config file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The config file (TOML).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The SQLite database file.
    #[arg(long, value_name = "FILE", conflicts_with = "postgres")]
    pub db: Option<PathBuf>,
    /// A PostgreSQL database (not available yet).
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// The address to listen on, HOST:PORT.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

/// The flags every client command takes.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The server's URL. JOBQUEUE_TOKEN, when set, is sent as a bearer token.
    #[arg(long, env = "JOBQUEUE_URL", default_value = DEFAULT_URL, value_name = "URL")]
    pub url: String,
    /// Print the server's JSON (one document per line) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `enqueue`'s arguments.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// The pipeline to run.
    pub pipeline: String,
    /// The job's input: JSON, @FILE for a file of JSON, or - for standard input.
    #[arg(long, value_name = "JSON")]
    pub input: Option<String>,
    /// Higher runs first (default 0).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub priority: Option<i64>,
    /// Refused while another queued or running job has the same key.
    #[arg(long, value_name = "KEY", conflicts_with = "unique_by_input")]
    pub unique_key: Option<String>,
    /// Make the unique key from the pipeline and the input.
    #[arg(long)]
    pub unique_by_input: bool,
    /// Also refused while a job created in the same window of this period
    /// (30m, 1h, 1d) holds the key, in any state; needs a key.
    #[arg(long, value_name = "PERIOD")]
    pub unique_for: Option<String>,
    /// The server and the output format.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `jobs`' arguments.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs in these statuses (comma-separated: queued,running,...).
    #[arg(long, value_name = "S")]
    pub status: Option<String>,
    /// Only jobs of this pipeline.
    #[arg(long, value_name = "NAME")]
    pub pipeline: Option<String>,
    /// At most this many jobs.
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// The page after this cursor (printed when there are more jobs).
    #[arg(long, value_name = "C")]
    pub cursor: Option<String>,
    /// The server and the output format.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The arguments of commands about one job.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// The job's id.
    pub id: String,
    /// The server and the output format.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The arguments of commands about one pipeline.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// The pipeline's name.
    pub pipeline: String,
    /// The server and the output format.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `tail`'s arguments.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Only this job's events (from its first); else every job's.
    pub id: Option<String>,
    /// Only these event types (comma-separated), for every job's events.
    #[arg(long, value_name = "TYPES", conflicts_with = "id")]
    pub types: Option<String>,
    /// Start after this event sequence number.
    #[arg(long, value_name = "SEQ")]
    pub after: Option<u64>,
    /// The server and the output format.
    #[command(flatten)]
    pub client: ClientArgs,
}

fn client(args: &ClientArgs) -> Result<Client, CommandError> {
    let token = std::env::var("JOBQUEUE_TOKEN").ok();
    Ok(Client::new(&args.url, token)?)
}

/// Runs a parsed command line; returns the process's exit status.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => {
            let opts = ServeOptions {
                config: args.config,
                db: args.db,
                postgres: args.postgres,
                listen: args.listen,
            };
            match server::serve(opts).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{}", error_text(&e.to_string()));
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { file } => check_config(&file),
        command => {
            // Not locked for the whole command: `tail`'s progress bars are
            // redrawn on stdout from their own ticker threads.
            let mut stdout = std::io::stdout();
            let terminal = std::io::stdout().is_terminal();
            match client_command(command, terminal, &mut stdout).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
                Err(e) => {
                    let _ = stdout.flush();
                    eprintln!("{}", error_text(&e.to_string()));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// An error message, every line of it prefixed so that it stands out.
fn error_text(message: &str) -> String {
    message
        .lines()
        .map(|l| format!("error: {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `check-config FILE`: prints a summary and exits 0 when the file is good;
/// prints every error with its place and exits 1 otherwise.
fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Ok(config) => {
            let pipelines: Vec<&str> = config.pipelines.iter().map(|p| p.name.as_str()).collect();
            let mut stdout = std::io::stdout().lock();
            // Schedules are an addition: named only when there are any.
            let schedules = match config.schedules.len() {
                0 => String::new(),
                1 => ", 1 schedule".to_owned(),
                n => format!(", {n} schedules"),
            };
            let _ = writeln!(
                stdout,
                "{}: ok ({} pipeline{}{}, {} webhook endpoint{}{schedules})",
                file.display(),
                pipelines.len(),
                if pipelines.len() == 1 { "" } else { "s" },
                if pipelines.is_empty() {
                    String::new()
                } else {
                    format!(": {}", pipelines.join(", "))
                },
                config.webhooks.endpoints.len(),
                if config.webhooks.endpoints.len() == 1 {
                    ""
                } else {
                    "s"
                },
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            let n = errors.errors.len();
            eprintln!(
                "{}: {n} error{}",
                file.display(),
                if n == 1 { "" } else { "s" }
            );
            ExitCode::FAILURE
        }
    }
}

async fn client_command(
    command: Command,
    terminal: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    match command {
        Command::Enqueue(args) => {
            let input = args.input.as_deref().map(client::read_input).transpose()?;
            let job = NewJob {
                pipeline: args.pipeline,
                input,
                priority: args.priority,
                unique_key: args.unique_key,
                unique_by_input: args.unique_by_input,
                unique_for: args.unique_for,
            };
            client::enqueue(&client(&args.client)?, &job, args.client.json, out).await
        }
        Command::Jobs(args) => {
            let query = JobsQuery {
                status: args.status,
                pipeline: args.pipeline,
                limit: args.limit,
                cursor: args.cursor,
            };
            client::jobs(&client(&args.client)?, &query, args.client.json, out).await
        }
        Command::Show(args) => {
            client::show(&client(&args.client)?, &args.id, args.client.json, out).await
        }
        Command::Cancel(args) => {
            client::cancel(&client(&args.client)?, &args.id, args.client.json, out).await
        }
        Command::Retry(args) => {
            client::retry(&client(&args.client)?, &args.id, args.client.json, out).await
        }
        Command::Tail(args) => {
            let query = TailQuery {
                job: args.id,
                types: args.types,
                after: args.after,
            };
            client::tail(
                &client(&args.client)?,
                &query,
                args.client.json,
                terminal,
                out,
            )
            .await
        }
        Command::Pipelines(args) => client::pipelines(&client(&args)?, args.json, out).await,
        Command::Pause(args) => {
            let c = client(&args.client)?;
            client::pause(&c, &args.pipeline, true, args.client.json, out).await
        }
        Command::Resume(args) => {
            let c = client(&args.client)?;
            client::pause(&c, &args.pipeline, false, args.client.json, out).await
        }
        Command::Serve(_) | Command::CheckConfig { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse_as_the_contract_writes_them() {
        let cli = Cli::try_parse_from([
            "jobqueue",
            "enqueue",
            "build",
            "--input",
            "{\"a\":1}",
            "--priority",
            "-5",
            "--unique-key",
            "k",
            "--url",
            "http://h:1",
        ]);
        let Ok(Cli {
            command: Command::Enqueue(args),
        }) = cli
        else {
            panic!("{cli:?}")
        };
        assert_eq!(args.priority, Some(-5));
        assert_eq!(args.client.url, "http://h:1");
        assert!(
            Cli::try_parse_from(["jobqueue", "serve", "--db", "a", "--postgres", "b"]).is_err()
        );
        assert!(Cli::try_parse_from(["jobqueue", "tail"]).is_ok());
        assert!(Cli::try_parse_from(["jobqueue", "tail", "ID", "--url", "http://x"]).is_ok());
        assert!(Cli::try_parse_from(["jobqueue", "jobs", "--status", "queued,running"]).is_ok());
    }
}
