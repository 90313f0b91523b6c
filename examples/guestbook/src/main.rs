//! The guestbook's binary: every app of the `hearth` binary, and the guestbook.
//!
//! `cargo run -- serve`, `cargo run -- migrate --status`, `cargo run -- --help`: the whole
//! command line of `hearth`, with the guestbook's settings (`--guestbook-banned-words`) in it.

fn main() -> std::process::ExitCode {
    hearth::bundled::application().app(guestbook::app()).main()
}
