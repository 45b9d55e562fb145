//! The `weft-control` binary; everything lives in the library so `weftctl` can run it too.

fn main() -> std::process::ExitCode {
    weft_control::main_with_args(std::env::args_os())
}
