//! The command line: `lintel serve`, `lintel migrate status|up|down|new`,
//! `lintel superuser create EMAIL`, `lintel types --lang typescript [--out FILE]`,
//! `lintel dev-cert --out DIR`, and the clients of a running server `lintel import`
//! and `lintel export` (`transfer.rs`).

mod transfer;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

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
        /// Serve HTTPS with this PEM certificate chain (with --tls-key).
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's PEM private key.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Write a self-signed certificate for local HTTPS (cert.pem, key.pem).
    DevCert {
        /// The folder to write into.
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
    },
    /// Report, apply, revert or create migrations.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Manage superuser accounts.
    Superuser {
        #[command(subcommand)]
        action: SuperuserAction,
    },
    /// Write client types of the collections in the store (the same as
    /// GET /v1/types.ts; any OpenAPI generator can also use GET /v1/openapi.json).
    Types {
        /// The language to write.
        #[arg(long, value_enum, default_value_t = Lang::Typescript)]
        lang: Lang,
        /// The file to write (default: standard output).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Import an NDJSON or CSV file into a collection of a running server (a job; the
    /// credential comes from LINTEL_TOKEN).
    Import {
        /// The collection.
        collection: String,
        /// The file (.ndjson, .jsonl or .csv).
        file: PathBuf,
        /// atomic: all rows or none; partial: the good rows are kept.
        #[arg(long, value_enum, default_value_t = ImportMode::Atomic)]
        mode: ImportMode,
        /// The file's format (default: from its extension).
        #[arg(long, value_enum)]
        format: Option<FileFormat>,
        /// The server.
        #[arg(long, env = "LINTEL_URL", default_value = "http://127.0.0.1:8090")]
        url: String,
    },
    /// Export the records of a collection of a running server that the credential
    /// (LINTEL_TOKEN) may list, as NDJSON or CSV.
    Export {
        /// The collection.
        collection: String,
        #[arg(long, value_enum, default_value_t = FileFormat::Ndjson)]
        format: FileFormat,
        /// Only records matching this filter.
        #[arg(long)]
        filter: Option<String>,
        /// Sort, as in the records API (e.g. -created).
        #[arg(long)]
        sort: Option<String>,
        /// Only these fields, comma-separated.
        #[arg(long, value_delimiter = ',')]
        fields: Option<Vec<String>>,
        /// The file to write (default: standard output).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// The server.
        #[arg(long, env = "LINTEL_URL", default_value = "http://127.0.0.1:8090")]
        url: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ImportMode {
    Atomic,
    Partial,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FileFormat {
    Ndjson,
    Csv,
}

impl FileFormat {
    fn as_str(self) -> &'static str {
        match self {
            FileFormat::Ndjson => "ndjson",
            FileFormat::Csv => "csv",
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Lang {
    Typescript,
}

#[derive(Debug, Subcommand)]
pub enum SuperuserAction {
    /// Create a superuser, or set the password of an existing one. The password comes
    /// from LINTEL_SUPERUSER_PASSWORD or is asked for.
    Create {
        /// The superuser's email address.
        email: String,
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
    if let Command::DevCert { out } = &cli.command {
        let (cert, key) = crate::http::serve::write_dev_cert(out)?;
        println!(
            "wrote {} and {}\nserve them with: lintel serve --tls-cert {} --tls-key {}",
            cert.display(),
            key.display(),
            cert.display(),
            key.display()
        );
        return Ok(());
    }
    match cli.command {
        Command::Import {
            collection,
            file,
            mode,
            format,
            url,
        } => {
            let mode = match mode {
                ImportMode::Atomic => "atomic",
                ImportMode::Partial => "partial",
            };
            return transfer::import(
                transfer::Target::from_env(url)?,
                &collection,
                &file,
                mode,
                format.map(FileFormat::as_str),
            )
            .await;
        }
        Command::Export {
            collection,
            format,
            filter,
            sort,
            fields,
            out,
            url,
        } => {
            return transfer::export(
                transfer::Target::from_env(url)?,
                &collection,
                format.as_str(),
                filter,
                sort,
                fields,
                out,
            )
            .await;
        }
        _ => {}
    }
    let (listen, tls) = match &cli.command {
        Command::Serve {
            listen,
            tls_cert,
            tls_key,
        } => (
            *listen,
            tls_cert
                .clone()
                .zip(tls_key.clone())
                .map(|(c, k)| config::TlsFlags {
                    cert_file: c,
                    key_file: k,
                }),
        ),
        _ => (None, None),
    };
    let flags = FlagOverrides {
        data_dir: cli.data_dir.clone(),
        migrations_dir: cli.migrations_dir.clone(),
        listen,
        database_url: cli.database_url.clone(),
        tls,
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
        Command::Superuser {
            action: SuperuserAction::Create { email },
        } => create_superuser(config, &email).await,
        Command::Types { lang, out } => types(config, lang, out).await,
        Command::DevCert { .. } | Command::Import { .. } | Command::Export { .. } => Ok(()),
    }
}

/// Reads the password from the environment, or from the terminal without echo.
fn read_password() -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    if let Ok(p) = std::env::var("LINTEL_SUPERUSER_PASSWORD") {
        return Ok(p);
    }
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let echo = |on: bool| {
        if tty {
            let _ = std::process::Command::new("stty")
                .arg(if on { "echo" } else { "-echo" })
                .stdin(std::process::Stdio::inherit())
                .status();
        }
    };
    eprint!("Password: ");
    let _ = std::io::stderr().flush();
    echo(false);
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    echo(true);
    eprintln!();
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

async fn create_superuser(config: config::Config, email: &str) -> anyhow::Result<()> {
    let email = crate::auth::accounts::normalize_email(email);
    anyhow::ensure!(
        email.contains('@') && email.len() <= 254,
        "'{email}' is not an email address"
    );
    let password = tokio::task::spawn_blocking(read_password).await??;
    crate::auth::password::check(&config.auth, &password, &email)
        .map_err(|(_, msg)| anyhow::anyhow!("the password {msg}"))?;
    let hasher = {
        let cfg = config.auth.clone();
        tokio::task::spawn_blocking(move || crate::auth::password::Hasher::new(&cfg)).await??
    };
    let hash = hasher
        .hash(password)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = crate::app::open_store(&config, &crate::telemetry::Metrics::new()).await?;
    let result = crate::auth::superusers::upsert(store.as_ref(), &email, &hash).await;
    store.close().await;
    let (id, created) = result.map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "{} superuser {email} ({id})",
        if created {
            "created"
        } else {
            "updated the password of"
        }
    );
    Ok(())
}

async fn migrate(config: config::Config, action: MigrateAction) -> anyhow::Result<()> {
    let dir = config.migrations_path();
    if let MigrateAction::New { name } = &action {
        let path = migrations::create_empty(&dir, &migrations::VersionClock::default(), name)?;
        println!("created {}", path.display());
        return Ok(());
    }
    let store = crate::app::open_store(&config, &crate::telemetry::Metrics::new()).await?;
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

/// Reads the catalog from the store (without applying pending migration files) and
/// writes its types.
async fn types(config: config::Config, lang: Lang, out: Option<PathBuf>) -> anyhow::Result<()> {
    let store = crate::app::open_store(&config, &crate::telemetry::Metrics::new()).await?;
    let loaded = crate::state::load_catalog(store.as_ref()).await;
    store.close().await;
    let (_, catalog) = loaded?;
    let text = match lang {
        Lang::Typescript => {
            crate::http::typescript::generate(&catalog, config.auth.password_min_length.max(8))
        }
    };
    match out {
        Some(path) => {
            tokio::fs::write(&path, text)
                .await
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
            eprintln!(
                "wrote the types of {} collection(s) to {}",
                catalog.collections.len(),
                path.display()
            );
        }
        None => {
            tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(text.as_bytes())?;
                stdout.flush()
            })
            .await??;
        }
    }
    Ok(())
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        String::new()
    } else {
        format!(": {}", v.join(", "))
    }
}
