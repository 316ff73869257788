fn main() -> std::process::ExitCode {
    callverify::cli::main()
}
