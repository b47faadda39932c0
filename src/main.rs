fn main() -> std::process::ExitCode {
    idat_pipe::cli::main()
}
