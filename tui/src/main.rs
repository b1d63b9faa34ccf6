//! `shoal`: the Shoal console and command line. With no arguments it opens
//! the interactive console; with a subcommand it runs that operation
//! against a node's control API, the shape of `docker swarm|node|service`.

mod cli;
mod console;

fn main() -> std::process::ExitCode {
    cli::main()
}
