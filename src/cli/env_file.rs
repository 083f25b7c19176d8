//! `check --env-file FILE`: the variables of a systemd `EnvironmentFile=`, read the
//! way systemd reads them, so that `check` sees the service's environment.

use std::path::Path;

use crate::config::{ConfigError, ConfigErrors};

/// Largest environment file read: a few dozen variables take a kilobyte.
const MAX_SIZE: u64 = 1024 * 1024;

/// What an environment file holds: its assignments in order (a later one of the same
/// name wins, as in systemd), and the lines systemd would ignore with a warning.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EnvFile {
    /// `(name, value)` pairs.
    pub vars: Vec<(String, String)>,
    /// `file:line: …` for each assignment ignored (a name no environment takes).
    pub warnings: Vec<String>,
}

/// Reads `path` as systemd reads an `EnvironmentFile=`; an unreadable file is a config
/// error (exit 78), as it stops the unit from starting.
pub fn read(path: &Path) -> Result<EnvFile, ConfigErrors> {
    let fail = |message: String| ConfigErrors(vec![ConfigError::file(path, message)]);
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_SIZE + 1), &mut bytes))
        .map_err(|e| fail(format!("cannot read the environment file: {e}")))?;
    if bytes.len() as u64 > MAX_SIZE {
        return Err(fail(format!(
            "is larger than {} KiB, too large for an environment file",
            MAX_SIZE / 1024
        )));
    }
    let text = String::from_utf8(bytes).map_err(|_| fail("is not UTF-8, which systemd requires".into()))?;
    Ok(parse(path, &text))
}

/// The rules of systemd.exec(5), `EnvironmentFile=`: empty lines, lines without `=`,
/// and lines starting with `#` or `;` are ignored; whitespace around the name and the
/// value is dropped; an unquoted value takes `\x` as `x` and a backslash at the end of
/// a line joins the next one; a single-quoted value is taken verbatim, a double-quoted
/// one with `\"`, `\\`, `\$`, `` \` `` and backslash-newline escaped; both may span
/// lines.
pub fn parse(path: &Path, text: &str) -> EnvFile {
    let mut out = EnvFile::default();
    let chars: Vec<char> = text.chars().collect();
    let (mut i, mut line) = (0usize, 1usize);
    while i < chars.len() {
        let start_line = line;
        // The start of a line: skip blanks; a comment or a line without `=` goes whole.
        while i < chars.len() && matches!(chars[i], ' ' | '\t' | '\r') {
            i += 1;
        }
        let rest_of_line =
            |i: usize| chars[i..].iter().position(|c| *c == '\n').map_or(chars.len(), |n| i + n);
        if i >= chars.len() {
            break;
        }
        if matches!(chars[i], '#' | ';' | '\n') || !chars[i..rest_of_line(i)].contains(&'=') {
            i = rest_of_line(i) + 1;
            line += 1;
            continue;
        }
        let eq = i + chars[i..].iter().position(|c| *c == '=').unwrap_or(0);
        let name: String = chars[i..eq].iter().collect::<String>().trim_end().to_string();
        i = eq + 1;
        while i < chars.len() && matches!(chars[i], ' ' | '\t' | '\r') {
            i += 1;
        }
        let mut value = String::new();
        match chars.get(i) {
            Some(&quote @ ('\'' | '"')) => {
                i += 1;
                while i < chars.len() && chars[i] != quote {
                    let c = chars[i];
                    if c == '\n' {
                        line += 1;
                    }
                    if quote == '"' && c == '\\' && i + 1 < chars.len() {
                        let next = chars[i + 1];
                        match next {
                            '\n' => line += 1,
                            '"' | '\\' | '$' | '`' => value.push(next),
                            other => {
                                value.push('\\');
                                value.push(other);
                            }
                        }
                        i += 2;
                        continue;
                    }
                    value.push(c);
                    i += 1;
                }
                // Past the closing quote, the rest of the line.
                i = rest_of_line(i.min(chars.len())) + 1;
                line += 1;
            }
            _ => {
                let mut pending_blank = String::new();
                while i < chars.len() && chars[i] != '\n' {
                    let c = chars[i];
                    if c == '\\' && i + 1 < chars.len() {
                        value.push_str(&std::mem::take(&mut pending_blank));
                        if chars[i + 1] == '\n' {
                            line += 1;
                        } else {
                            value.push(chars[i + 1]);
                        }
                        i += 2;
                        continue;
                    }
                    if matches!(c, ' ' | '\t' | '\r') {
                        pending_blank.push(c);
                    } else {
                        value.push_str(&std::mem::take(&mut pending_blank));
                        value.push(c);
                    }
                    i += 1;
                }
                i += 1;
                line += 1;
            }
        }
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if valid {
            out.vars.push((name, value));
        } else {
            out.warnings.push(format!(
                "{}:{start_line}: `{name}` is not a variable name; systemd ignores this assignment",
                path.display()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(text: &str) -> Vec<(String, String)> {
        parse(Path::new("env"), text).vars
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn assignments_are_read_as_systemd_reads_them() {
        let text = "# a comment\n; another\n\nAWS_REGION=eu-west-1\n  SPACED  =  a b  \nno equals sign\n\
                    ESCAPED=a\\ b\\\\c\\$d\nJOINED=one\\\ntwo\nSINGLE='x \\n \"y\"'\n\
                    DOUBLE=\"a \\\"b\\\" \\\\ \\$HOME \\q\"\nMULTI=\"line1\nline2\"\nEMPTY=\nAFTER=1\n";
        assert_eq!(
            vars(text),
            pairs(&[
                ("AWS_REGION", "eu-west-1"),
                ("SPACED", "a b"),
                ("ESCAPED", "a b\\c$d"),
                ("JOINED", "onetwo"),
                ("SINGLE", "x \\n \"y\""),
                ("DOUBLE", "a \"b\" \\ $HOME \\q"),
                ("MULTI", "line1\nline2"),
                ("EMPTY", ""),
                ("AFTER", "1"),
            ])
        );
        let parsed = parse(Path::new("env"), "OK=1\n9LIVES=x\nBAD-NAME=y\n");
        assert_eq!(parsed.vars, pairs(&[("OK", "1")]));
        assert_eq!(
            parsed.warnings,
            [
                "env:2: `9LIVES` is not a variable name; systemd ignores this assignment",
                "env:3: `BAD-NAME` is not a variable name; systemd ignores this assignment"
            ]
        );
        assert_eq!(vars("UNCLOSED=\"abc"), pairs(&[("UNCLOSED", "abc")]));
        assert_eq!(vars("CRLF=v\r\nNEXT=w\r\n"), pairs(&[("CRLF", "v"), ("NEXT", "w")]));
    }
}
