//! The `lintel` binary: a thin shell over the library.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match lintel::cli::run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lintel: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
