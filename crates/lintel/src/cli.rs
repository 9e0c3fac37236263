//! The command line: `lintel serve` and `lintel migrate status|up|down|new`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, FlagOverrides};
use crate::migrations;

#[derive(Debug, Parser)]
#[command(
    name = "lintel",
    version,
    about = "A backend server in one binary: collections, records and more over HTTP."
)]
pub struct Cli {
    /// Configuration file (default: ./lintel.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where data lives (default ./lintel_data).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where collection migration files live (default <data-dir>/migrations).
    #[arg(long, global = true, value_name = "DIR")]
    pub migrations_dir: Option<PathBuf>,
    /// Run on PostgreSQL instead of the embedded store (postgres://...).
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve {
        /// Address to listen on (default 127.0.0.1:8090).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Report, apply, revert or create migrations.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum MigrateAction {
    /// List migrations and whether each is applied.
    Status,
    /// Apply every pending migration file.
    Up,
    /// Revert the most recently applied migrations.
    Down {
        /// How many to revert.
        #[arg(long, default_value_t = 1)]
        steps: usize,
    },
    /// Create an empty migration file to fill in.
    New {
        /// A short name, e.g. add_tags.
        name: String,
    },
}

/// Parses the command line and runs it.
pub async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let listen = match &cli.command {
        Command::Serve { listen } => *listen,
        Command::Migrate { .. } => None,
    };
    let flags = FlagOverrides {
        data_dir: cli.data_dir.clone(),
        migrations_dir: cli.migrations_dir.clone(),
        listen,
        database_url: cli.database_url.clone(),
    };
    let loaded = config::load(cli.config.as_deref(), &flags)?;
    let _log_guard = crate::telemetry::init_logging(&loaded.config.log);
    for key in &loaded.unknown_keys {
        tracing::warn!(key = %key, "unknown configuration key ignored");
    }
    let config = loaded.config;
    match cli.command {
        Command::Serve { .. } => crate::app::run(config).await,
        Command::Migrate { action } => migrate(config, action).await,
    }
}

async fn migrate(config: config::Config, action: MigrateAction) -> anyhow::Result<()> {
    let dir = config.migrations_path();
    if let MigrateAction::New { name } = &action {
        let path = migrations::create_empty(&dir, &migrations::VersionClock::default(), name)?;
        println!("created {}", path.display());
        return Ok(());
    }
    let store = crate::app::open_store(&config).await?;
    let result = match action {
        MigrateAction::Status => {
            let files = migrations::scan(&dir)?;
            let applied = store
                .applied_migrations()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let rows = migrations::status(&files, &applied);
            if rows.is_empty() {
                println!("no migrations in {}", dir.display());
            }
            for (version, name, state) in rows {
                println!("{version}  {:<12}  {name}", state.as_str());
            }
            Ok(())
        }
        MigrateAction::Up => {
            let done = migrations::apply_pending(store.as_ref(), &dir).await?;
            println!("applied {} migration(s){}", done.len(), list(&done));
            Ok(())
        }
        MigrateAction::Down { steps } => {
            let done = migrations::revert_last(store.as_ref(), steps).await?;
            println!("reverted {} migration(s){}", done.len(), list(&done));
            if !done.is_empty() {
                println!(
                    "note: `lintel serve` applies pending files at start; move or delete the reverted files to keep them reverted"
                );
            }
            Ok(())
        }
        MigrateAction::New { .. } => Ok(()),
    };
    store.close().await;
    result
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        String::new()
    } else {
        format!(": {}", v.join(", "))
    }
}
