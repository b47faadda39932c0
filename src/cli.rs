//! Command-line interface (clap). Subcommands live with the module they drive.
pub fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
