//! Writing command output to standard output.

/// Writes to standard output. When the reader has gone away (`doudi … | head`), the process ends
/// quietly with status 141, as one killed by SIGPIPE would, instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if write!(std::io::stdout().lock(), $($arg)*).is_err() {
            std::process::exit(141)
        }
    }};
}

/// [`out!`] with a newline.
macro_rules! outln {
    () => {
        out!("\n")
    };
    ($($arg:tt)*) => {
        out!("{}\n", format_args!($($arg)*))
    };
}
