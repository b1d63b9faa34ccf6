//! The `shoal` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    shoal_tui::cli::main()
}
