//! `completions` and the hidden `man`: shell completion scripts and manual pages,
//! generated from the clap definitions of [`Cli`] at the moment they are asked for, so
//! that they cannot drift from the command line (scripts/deb.sh puts them in the
//! package).

use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use super::{Cli, Failure, exit};

/// The binary's name, as completions and pages call it.
const NAME: &str = "highwater";

/// DESCRIPTION of highwater.1.
const DESCRIPTION: &str = "highwater watches places where data lands without announcing it (local \
directories, S3 prefixes, Postgres tables) and sends one event per new item, once, soon after it \
lands, to a sink: standard output, a file, a webhook, or Apache Airflow's asset events API. Each \
watcher (one source, one sink) is a YAML file in the watchers directory the daemon config names. \
Progress is kept in a state store through an outbox: a batch is stored before it is delivered, and \
the watermark moves only after the sink acknowledged it, so a restart neither loses nor repeats \
anything; a repeat after a crash carries the same event id.\n\n\
As a service: systemctl start highwater (the unit runs highwater --config \
/etc/highwater/highwater.yaml run); systemctl reload highwater applies changed watcher files. \
The documentation is in /usr/share/doc/highwater/ (README.md and docs/).";

/// The completion script for `shell`. Rendered into memory: clap_complete panics on a
/// write error, and standard output may be a closed pipe.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), NAME, &mut script);
    script
}

/// Writes `highwater.1` (with the sections clap does not know: files, environment, exit
/// status) and one page per visible subcommand (`highwater-state-list.1`, …) into `dir`.
pub fn pages(dir: &Path) -> Result<(), Failure> {
    let failed = |path: &Path, e: std::io::Error| Failure::Runtime(format!("{}: {e}", path.display()));
    std::fs::create_dir_all(dir).map_err(|e| failed(dir, e))?;
    // highwater.1's NAME line is "highwater - <about>": the about without the name
    // `--help` starts it with, and a description of what the daemon does.
    let mut cmd = Cli::command()
        .disable_help_subcommand(true)
        .about("one event per new file, object or row, once, soon after it lands")
        .long_about(DESCRIPTION);
    cmd.build();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // Subcommand pages, recursively (`highwater-state.1`, `highwater-state-get.1`).
        clap_mangen::generate_to(sub.clone(), dir).map_err(|e| failed(dir, e))?;
    }
    let path = dir.join(format!("{NAME}.1"));
    let mut page = Vec::new();
    let man = clap_mangen::Man::new(cmd);
    man.render(&mut page).map_err(|e| failed(&path, e))?;
    page.extend_from_slice(extra_sections().as_bytes());
    std::fs::write(&path, page).map_err(|e| failed(&path, e))
}

/// FILES, ENVIRONMENT, EXIT STATUS and SEE ALSO of `highwater.1`, in roff. The exit
/// codes are the constants `main` exits with.
fn extra_sections() -> String {
    let codes: [(i32, &str); 8] = [
        (exit::OK, "Success."),
        (exit::FAILURE, "A failure at run time not covered below."),
        (exit::USAGE, "Bad command-line usage."),
        (exit::UNAVAILABLE, "check \\-\\-connect: a source or sink cannot be reached or used."),
        (exit::OSERR, "run: a signal handler or the HTTP listener could not be set up."),
        (exit::STORE, "The state store could not be opened, read or written."),
        (exit::TEMPFAIL, "once: a watcher could not finish its cycle; its batch stays pending."),
        (exit::CONFIG, "The configuration is invalid; systemd does not restart the service on it."),
    ];
    let mut s = String::new();
    s.push_str(".SH FILES\n");
    for (path, what) in [
        ("/etc/highwater/highwater.yaml", "The daemon config of the packaged service."),
        ("/etc/highwater/watchers/", "Watcher files, one watcher per file."),
        ("/var/lib/highwater/", "The state store of the packaged service."),
        ("/usr/share/doc/highwater/examples/", "Example watcher files, one per source and sink."),
    ] {
        s.push_str(&format!(".TP\n\\fI{path}\\fR\n{what}\n"));
    }
    s.push_str(".SH ENVIRONMENT\n");
    for (var, what) in [
        ("HIGHWATER_CONFIG", "The daemon config file, as \\fB\\-\\-config\\fR."),
        ("HIGHWATER_LOG_FORMAT", "The log format, as \\fB\\-\\-log\\-format\\fR."),
        ("RUST_LOG", "Filters log records (default \\fBinfo\\fR)."),
    ] {
        s.push_str(&format!(".TP\n\\fB{var}\\fR\n{what}\n"));
    }
    s.push_str(".SH \"EXIT STATUS\"\n");
    for (code, what) in codes {
        s.push_str(&format!(".TP\n\\fB{code}\\fR\n{what}\n"));
    }
    s.push_str(
        ".SH \"SEE ALSO\"\n\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1), /usr/share/doc/highwater/README.md\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible subcommand, as the words typed after `highwater` (`["state", "get"]`).
    fn subcommands(cmd: &clap::Command, above: &[String], all: &mut Vec<Vec<String>>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let mut path = above.to_vec();
            path.push(sub.get_name().to_string());
            all.push(path.clone());
            subcommands(sub, &path, all);
        }
    }

    fn every_subcommand() -> Vec<Vec<String>> {
        let mut cmd = Cli::command().disable_help_subcommand(true);
        cmd.build();
        let mut all = Vec::new();
        subcommands(&cmd, &[], &mut all);
        all
    }

    /// The pages are written from the definitions: a subcommand added later gets its
    /// page and its line in highwater.1 without anyone remembering to.
    #[test]
    fn the_man_pages_cover_every_subcommand_and_say_what_clap_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        pages(&dir.path().join("man")).expect("pages");
        let read = |name: &str| {
            std::fs::read_to_string(dir.path().join("man").join(name))
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let main = read("highwater.1");
        assert!(main.starts_with(".ie"), "a roff page: {main:.80}");
        let subs = every_subcommand();
        assert!(subs.len() > 10, "{subs:?}");
        for path in &subs {
            let page = read(&format!("highwater-{}.1", path.join("-")));
            assert!(page.contains(".SH NAME"), "{path:?}");
            if path.len() == 1 {
                assert!(main.contains(&format!("highwater\\-{}(1)", path[0])), "highwater.1 names {path:?}");
            }
        }
        assert!(!dir.path().join("man/highwater-man.1").exists(), "the hidden command has no page");
        for section in
            [".SH FILES", ".SH ENVIRONMENT", ".SH \"EXIT STATUS\"", "/etc/highwater/highwater.yaml"]
        {
            assert!(main.contains(section), "{section}");
        }
        assert!(main.contains(".TP\n\\fB78\\fR\n"), "exit codes listed");
    }

    #[test]
    fn completions_of_bash_zsh_and_fish_offer_every_subcommand() {
        let subs = every_subcommand();
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(completions(shell)).expect("utf-8");
            assert!(script.contains("highwater"), "{shell}");
            for path in &subs {
                let name = path.last().expect("a name");
                assert!(script.contains(name.as_str()), "{shell} completes {path:?}");
            }
        }
    }
}
